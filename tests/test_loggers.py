"""W&B's mode is decided before the logger is built: online only with credentials and a server
that answers; offline otherwise, within the probe's timeout; never a prompt. The CSV log of a
multi-process run."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time

import pandas as pd
import pytest
from lightning.pytorch.loggers import WandbLogger

from lightseg.tools.plot import csv_logs, epoch_table
from lightseg.train import train
from lightseg.utils.loggers import wandb_logger, wandb_mode, wandb_run_id
from tests.conftest import make_config


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL", "WANDB_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@pytest.fixture
def server(monkeypatch):
    """A W&B host that answers (401, as the API does without a key) at WANDB_BASE_URL."""

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{httpd.server_port}")
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_offline_without_credentials(no_credentials, server, caplog):
    caplog.set_level(logging.INFO)
    assert wandb_mode("auto", "run") == "offline"
    assert "W&B: no credentials found" in caplog.text
    assert "`wandb sync run/wandb/offline-run-*`" in caplog.text
    assert wandb_mode("online", "run") == "offline"  # asked for, but it cannot be


def test_online_with_an_api_key_or_a_netrc_entry_for_the_host(no_credentials, server, monkeypatch):
    no_credentials.joinpath(".netrc").write_text("machine elsewhere\n  login u\n  password k\n")
    assert wandb_mode() == "offline"  # an entry for another host
    no_credentials.joinpath(".netrc").write_text("machine 127.0.0.1\n  login u\n  password k\n")
    assert wandb_mode() == "online"
    no_credentials.joinpath(".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"


def test_an_unreachable_server_means_offline_within_the_probe_timeout(
    no_credentials, monkeypatch, caplog
):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: refused at once
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    caplog.set_level(logging.WARNING)
    assert wandb_mode("auto", "run") == "offline"
    assert f"W&B: http://127.0.0.1:{port} does not answer (waited 5 s); logging offline" in (
        caplog.text
    )
    with socket.socket() as silent:  # accepts the connection, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()
        assert wandb_mode("online", "run", probe_timeout=0.5) == "offline"
        assert time.monotonic() - started < 2.0


def test_wandb_mode_from_the_environment_wins(no_credentials, server, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("online") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode("online") == "offline"


def test_the_logger_is_lightnings_own_with_the_run_folders_id(no_credentials, server):
    id_file = no_credentials / "run" / "wandb_run_id.txt"
    logger = wandb_logger(save_dir=str(no_credentials / "run"), id_file=str(id_file))
    assert type(logger) is WandbLogger
    assert logger.version == id_file.read_text().strip() == wandb_run_id(id_file)


@pytest.mark.slow
def test_the_csv_log_of_a_ddp_spawn_run_keeps_its_epochs(one_thread, tmp_path, data_dir):
    # ddp_spawn fits, validates and tests the best checkpoint in new processes each: three
    # parts, the last two logged at epoch 0, step 0; the training epochs keep their values
    overrides = (
        "experiment=demo",
        "trainer=ddp_sim",
        "trainer.max_epochs=2",
        "logger=csv",
        "callbacks.progress_bar=null",
        "data.num_workers=0",
        "data.batch_size=4",
        "data.image_size=[64,64]",
        "data.source.num_cases=20",
    )
    cfg = make_config(tmp_path, *overrides, data_dir=data_dir)
    metrics = train(cfg)
    run = tmp_path / "run"
    parts = [pd.read_csv(path) for path in csv_logs(run)]
    assert len(parts) == 3 and "train/loss_epoch" in parts[0]
    assert parts[1]["val/dice"].tolist() == [pytest.approx(metrics["val/dice"])]
    assert parts[2]["test/dice"].tolist() == [pytest.approx(metrics["test/dice"])]
    fitted = parts[0].dropna(subset=["val/dice"])
    table = epoch_table(run)
    assert table.index.tolist() == fitted["epoch"].tolist() == [0, 1]
    assert table["val/dice"].tolist() == fitted["val/dice"].tolist()

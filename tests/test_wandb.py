"""W&B offline runs: config, run files, mask overlays, the same run id after a resume, fallback."""

from __future__ import annotations

import json
import logging
import re
import signal
import socket

import numpy as np
import pytest
import wandb
from hydra import compose, initialize_config_dir
from PIL import Image

from lightseg import CONFIG_DIR
from lightseg.runs.folder import WANDB_RUN_ID
from lightseg.tools.eval import evaluate
from lightseg.tools.plot import read_csv_log
from lightseg.utils.loggers import wandb_logger, wandb_run_id
from tests.runs import run_cli, tiny_cli_run


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for variable, folder in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache")):
        monkeypatch.setenv(variable, str(tmp_path / "wandb-home" / folder))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-home" / "config"))


def test_interrupted_cli_run_resumes_in_its_folder_with_the_same_wandb_run(
    wandb_offline, one_thread, monkeypatch, tmp_path, data_dir
):
    args = [
        *tiny_cli_run(tmp_path, data_dir),
        "logger=[csv,wandb,tensorboard]",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=2",
        "callbacks.prediction_overlays.num_images=2",
        "callbacks.prediction_overlays.every_n_epochs=1",
    ]
    kill = ["+callbacks.kill._target_=tests.runs.SignalAt", "+callbacks.kill.epoch=1"]
    with pytest.raises(SystemExit) as stopped:
        run_cli(monkeypatch, *args, *kill, "+callbacks.kill.batch_idx=0")
    assert stopped.value.code == 128 + signal.SIGTERM
    (run,) = (tmp_path / "logs" / "demo" / "runs").iterdir()
    assert not (run / "metrics.json").exists()

    run_cli(
        monkeypatch,
        *tiny_cli_run(tmp_path, data_dir)[:1],
        f"paths.log_dir={tmp_path / 'logs'}",
        "ckpt_path=last",
    )

    assert list((tmp_path / "logs" / "demo" / "runs").iterdir()) == [run]  # no new folder
    assert (run / "metrics.json").is_file()
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "finished" and len(info["resumes"]) == 1
    logged = read_csv_log(run).dropna(subset=["val/dice"])  # csv/version_0, version_1
    # epoch 0 from the first part, 1 appended by the resumed one, 2: the best checkpoint's
    assert logged["epoch"].tolist() == [0, 1, 2]

    # One W&B run in two offline segments, both under the id kept in the run folder.
    run_id = (run / WANDB_RUN_ID).read_text().strip()
    segments = sorted((run / "wandb").glob("offline-run-*"))
    assert len(segments) == 2 and all(s.name.endswith(f"-{run_id}") for s in segments)
    files = segments[-1] / "files"
    assert (files / "config.yaml").read_text() == (run / "config.yaml").read_text()
    assert (files / "splits" / "val.txt").read_text() == (run / "splits" / "val.txt").read_text()
    assert json.loads((files / "run_info.json").read_text()) == info  # final: "finished"
    first = json.loads((segments[0] / "files" / "run_info.json").read_text())
    assert first["status"] == "interrupted" and "stopped by SIGTERM" in first["message"]
    log = (segments[-1] / f"run-{run_id}.wandb").read_bytes()
    assert b"lightseg_version" in log and b"encoder_name" in log  # the W&B config record

    # Mask overlays: per epoch, 2 images with a true and a predicted mask each (values 0/1).
    # W&B names media files by their content: two equal masks (an untrained network predicting
    # background for both images) share one file, so 3 files are 4 masks too.
    for segment in segments:
        images = sorted((segment / "files/media/images/val").glob("predictions_*.png"))
        masks = sorted((segment / "files/media/images/mask/val").glob("predictions_*.mask.png"))
        values = [np.asarray(Image.open(m)) for m in masks]
        assert len(images) == 2 and len(masks) in (3, 4)
        assert all(set(np.unique(v)) <= {0, 1} for v in values)
        assert sum(v.any() for v in values) >= 2  # the two true masks hold foreground
    assert sorted(p.name for p in (run / "overlays").iterdir()) == [
        "epoch_000.png",
        "epoch_001.png",
    ]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for events in sorted((run / "tensorboard").glob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if "val/predictions" in accumulator.Tags()["images"]:
            steps += [e.step for e in accumulator.Images("val/predictions")]
    assert steps == [2, 4]  # global step after epochs 0 and 1 (2 batches each)


def test_wandb_goes_offline_when_the_server_cannot_be_reached(
    wandb_offline, monkeypatch, tmp_path, caplog
):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{closed.getsockname()[1]}")
    closed.close()
    id_file = tmp_path / WANDB_RUN_ID
    with caplog.at_level(logging.WARNING):
        logger = wandb_logger(mode="online", save_dir=str(tmp_path), id_file=str(id_file))
    assert "does not answer (waited 5 s); logging offline" in caplog.text
    run = logger.experiment
    assert run.settings.mode == "offline"
    assert run.id == id_file.read_text().strip()
    logger.log_metrics({"val/dice": 0.5}, step=1)  # training goes on
    wandb.finish()
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{run.id}"))) == 1


def test_wandb_run_id_is_kept_in_the_run_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    first = wandb_run_id(tmp_path / WANDB_RUN_ID)
    assert len(first) == 8 and first.isalnum()
    assert wandb_run_id(tmp_path / WANDB_RUN_ID) == first  # a resume reads it back
    monkeypatch.setenv("WANDB_RUN_ID", "sweep123")  # a W&B sweep agent chose the id
    other = tmp_path / "other" / WANDB_RUN_ID
    assert wandb_run_id(other) == "sweep123"
    assert other.read_text() == "sweep123\n"


def test_eval_numbers_land_in_the_summary_of_the_run_that_trained(
    wandb_offline, one_thread, monkeypatch, tmp_path, data_dir
):
    run_cli(monkeypatch, *tiny_cli_run(tmp_path, data_dir), "logger=[csv,wandb]")
    (run,) = (tmp_path / "logs" / "demo" / "runs").iterdir()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("eval", [f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}"])
    report = evaluate(cfg, data_from_run=True)

    run_id = (run / WANDB_RUN_ID).read_text().strip()
    segments = sorted((run / "wandb").glob("offline-run-*"))  # training's, then eval's
    assert len(segments) == 2 and segments[-1].name.endswith(f"-{run_id}")
    # offline, the summary is in the run's record log: each key, then its value as JSON
    log = (segments[-1] / f"run-{run_id}.wandb").read_bytes()

    def summarised(key: str, value: float) -> bool:
        return re.search(re.escape(key.encode()) + b".{1,4}" + json.dumps(value).encode(), log)

    for name, value in report["metrics"]["plain"].items():
        if value is not None:
            assert summarised(f"eval/test/plain/{name}", value), name
    assert report["cost"]["passes_per_image"] == 1
    assert summarised("eval/test/cost/passes_per_image", 1.0)
    assert b"confusion_matrix" in log and b"examples" in log  # the eval's figures as images

"""2-process runs as the command line starts them (``trainer=ddp_sim``: ddp_spawn over gloo) and
as torchrun does (``trainer.strategy=ddp``): the numbers they write are one process's for the
same weights, a stop signal ends every process of the job with ``last.ckpt`` saved, and a
worker that dies is restarted by torchrun and continues from ``last.ckpt``."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from wandb.proto import wandb_internal_pb2

from lightseg.experiment import build
from tests.test_faults import (
    REPOSITORY,
    assert_same_result,
    command,
    csv_rows,
    environment,
    final_numbers,
    mark,
    only_run,
    run,
)

#: Seconds in which a stopped job's every process has ended (CheckpointOnSignal.stop_timeout).
STOP_LIMIT = 60


def ddp_command(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    """The demo of tests/test_faults.py in 2 processes: 3 epochs of 3 batches per process."""
    return command(tmp_path, data_dir, "trainer=ddp_sim", "loss=ce", "data.batch_size=2", *extra)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir) -> dict:
    """The uninterrupted 2-process run."""
    tmp_path = tmp_path_factory.mktemp("ddp_reference")
    wandb = {f"WANDB_{k}": str(tmp_path / "wandb-home" / k) for k in ("DATA_DIR", "CONFIG_DIR")}
    offline = environment(WANDB_MODE="offline", WANDB_SILENT="true", **wandb)
    done = run(ddp_command(tmp_path, data_dir, "data.num_workers=0", "logger=[csv,wandb]"), offline)
    assert done.returncode == 0, done.stderr[-3000:]
    folder = only_run(tmp_path)
    return {"folder": folder, **final_numbers(folder)}


def one_process(run, folder: Path) -> tuple[dict[str, float], list[dict]]:
    """val/* and test/* of the run's best.ckpt in one process, and its per_image.csv rows.
    (cross-entropy is a mean over pixels: the loss too is the same however images are batched)"""
    cfg = OmegaConf.load(run.config)
    cfg.trainer.merge_with({"strategy": "auto", "devices": 1})
    cfg.logger = None
    cfg.callbacks = {
        "per_image": {
            "_target_": "lightseg.callbacks.PerImageResults",
            "folder": str(folder),
            "failure": cfg.failure,
        }
    }
    experiment = build(cfg, enable_progress_bar=False, enable_model_summary=False)
    trainer, module, data = experiment.trainer, experiment.module, experiment.datamodule
    metrics = {}
    for evaluate in (trainer.validate, trainer.test):
        results = evaluate(module, datamodule=data, ckpt_path=str(run.best), verbose=False)
        metrics.update(results[0])
    return metrics, per_image_rows(folder / "per_image.csv")


def wandb_logged(path: Path) -> dict[str, float]:
    """The last value of each metric in an offline W&B run's ``.wandb`` file: a LevelDB-style
    log (32 KiB blocks, a 7-byte header before each record or part of one; the file starts
    with 7 bytes of its own) of W&B's protobuf records."""
    block, header = 32768, 7
    data, position, chunk, logged = path.read_bytes(), header, b"", {}
    while position + header <= len(data):
        if block - position % block < header:  # a block's zero-filled tail
            position += block - position % block
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]
        chunk += data[position + header : position + header + length]
        position += header + length
        if kind not in (1, 4):  # a record's first or middle part (1: whole, 4: last part)
            continue
        record, chunk = wandb_internal_pb2.Record.FromString(chunk), b""
        for item in record.history.item:
            logged[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return logged


def per_image_rows(path: Path) -> list[dict]:
    with path.open() as file:
        return sorted(csv.DictReader(file), key=lambda row: row["id"])


@pytest.mark.slow  # ~70 s on 2 busy cores: three launches of 2 processes
def test_ddp_run_writes_the_metrics_one_process_gives_its_best_weights(tmp_path, reference):
    folder = reference["folder"]
    written = json.loads(folder.metrics.read_text())
    # the protocol card counts both processes' images: 9 steps of 2 images in each of 2
    assert written.pop("protocol")["budget"] == {"epochs": 3, "steps": 9, "images_seen": 36}
    expected, rows = one_process(folder, tmp_path / "one")
    assert {k for k in written if not k.startswith("best/")} == expected.keys()
    assert 0.0 < expected["val/iou"] < 1.0 and "test/dice_per_image" in expected
    assert written == pytest.approx({**written, **expected}, abs=1e-5)
    assert per_image_rows(folder.per_image) == rows and len(rows) == 4  # each test image once
    # the loggers got the same numbers: the CSV log's last value of each, W&B's run summary
    logged = {k: float(v) for row in csv_rows(folder) for k, v in row.items() if k in expected}
    assert logged == pytest.approx(expected, abs=1e-5)
    (segment,) = (folder.path / "wandb").glob("offline-run-*/run-*.wandb")
    files = segment.parent / "files"  # the run's record, uploaded by the launching process
    assert (files / "config.yaml").read_text() == folder.config.read_text()
    assert (files / "splits" / "test.txt").read_text() == (
        folder.path / "splits/test.txt"
    ).read_text()
    assert {k: v for k, v in wandb_logged(segment).items() if k in expected} == pytest.approx(
        expected, abs=1e-5
    )


@pytest.mark.slow  # ~200 s on 2 busy cores, the resumed run included (SIGTERM); ~60 s others
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name
)
def test_a_stop_signal_to_a_ddp_jobs_process_group_ends_every_process_then_resumes(
    tmp_path, data_dir, reference, signum
):
    marker = tmp_path / "mark"
    job = subprocess.Popen(
        ddp_command(tmp_path, data_dir, *mark(marker, epoch=1, batch_idx=1)),
        cwd=REPOSITORY,
        env=environment(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the job's processes: ranks, loader workers, resource tracker
    )
    while not marker.exists():
        assert job.poll() is None, job.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(job.pid, signum)  # as SLURM, `timeout` and Ctrl+C do: every process
    signalled = time.monotonic()
    _, err = job.communicate(timeout=STOP_LIMIT)
    while True:  # every process of the group has ended, not only the one waited for
        try:
            os.killpg(job.pid, 0)
        except ProcessLookupError:
            break
        assert time.monotonic() - signalled < STOP_LIMIT, "processes of the job are left"
        time.sleep(0.2)
    assert job.returncode == 128 + signum, err[-3000:]
    name = signal.Signals(signum).name
    assert err.count("lightseg: error:") == 1 and "Traceback" not in err
    assert f"lightseg: error: Training stopped by {name} in epoch 1 at global step 5" in err
    folder = only_run(tmp_path)
    assert folder.status == "interrupted" and not folder.metrics.exists()
    saved = torch.load(folder.last, weights_only=True)
    assert saved["epoch"] == 1 and saved["global_step"] == 3 + 2  # mid-epoch: 2 of 3 batches
    if signum != signal.SIGTERM:
        return

    resumed = run(ddp_command(tmp_path, data_dir, "ckpt_path=last", "data.num_workers=0"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert only_run(tmp_path) == folder and folder.status == "finished"
    assert_same_result(folder, reference)


#: torchrun passes these on to its workers (they run in sessions of their own, so a signal to
#: torchrun's process group reaches them only this way); SIGUSR1 is SLURM's pre-emption warning.
FORWARDED = "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"


def torchrun(tmp_path: Path, data_dir: Path, *extra: str, restarts: int = 0) -> list[str]:
    """``ddp_command``'s job started by ``torchrun --standalone --nproc-per-node=2``: both
    processes in the job's one folder, continuing what it saved (resume=auto)."""
    job = ddp_command(
        tmp_path,
        data_dir,
        "trainer.strategy=ddp",
        f"hydra.run.dir={tmp_path / 'logs' / 'demo' / 'runs' / 'job'}",
        "resume=auto",
        *extra,
    )
    launcher = ["--standalone", "--nproc-per-node=2", f"--max-restarts={restarts}", FORWARDED]
    return [sys.executable, "-m", "torch.distributed.run", *launcher, *job[1:]]


def start_at_mark(args: list[str], marker: Path, **env: str) -> tuple[subprocess.Popen, int]:
    """Start ``args`` in a session of its own; wait for the mark; the marking process's PID."""
    job = subprocess.Popen(
        args,
        cwd=REPOSITORY,
        env=environment(TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1", **env),  # a store per restart
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    while not (marker.exists() and marker.read_text()):
        assert job.poll() is None, job.communicate()[1][-3000:]
        time.sleep(0.05)
    return job, int(marker.read_text())


def processes_of(folder: Path) -> list[int]:
    """PIDs whose command line names ``folder``: every process of a job started for it."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if str(folder).encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # ended meanwhile
            continue
    return found


def assert_nothing_left(folder: Path, since: float) -> None:
    while processes_of(folder):
        assert time.monotonic() - since < STOP_LIMIT, f"processes left: {processes_of(folder)}"
        time.sleep(0.2)


@pytest.mark.slow  # ~60 s: a torchrun job, killed, restarted and finished
def test_torchrun_restarts_a_killed_worker_and_the_job_continues_from_last_ckpt(
    tmp_path, data_dir, reference
):
    marker = tmp_path / "mark"
    args = torchrun(tmp_path, data_dir, *mark(marker), "+callbacks.mark.rank=0", restarts=1)
    job, rank_0 = start_at_mark(args, marker)  # in epoch 1: last.ckpt holds epoch 0
    os.kill(rank_0, signal.SIGKILL)  # the rank holding run.lock, its loader workers running
    killed = time.monotonic()
    out, err = job.communicate(timeout=300)
    assert job.returncode == 0, err[-3000:]
    folder = only_run(tmp_path)
    assert f"Restored all states from the checkpoint at {folder.last}" in out + err
    assert folder.status == "finished"
    assert len(folder.info()["resumes"]) == 1
    assert_same_result(folder, reference)  # as the uninterrupted 2-process run
    assert_nothing_left(tmp_path, killed)


@pytest.mark.slow  # ~35 s each, ~25 s more for the resume
@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1], ids=lambda s: s.name
)
def test_a_stop_signal_to_a_torchrun_job_saves_once_and_ends_every_process(
    tmp_path, data_dir, reference, signum
):
    marker, calls = tmp_path / "mark", tmp_path / "scontrol_calls.txt"
    slurm = {}
    if signum == signal.SIGUSR1:  # SLURM's warning before the time limit: the job is requeued
        scontrol = tmp_path / "bin" / "scontrol"
        scontrol.parent.mkdir()
        scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
        scontrol.chmod(0o755)
        path = f"{scontrol.parent}{os.pathsep}{os.environ['PATH']}"
        slurm = {"SLURM_JOB_ID": "123", "PATH": path}
    job, _ = start_at_mark(torchrun(tmp_path, data_dir, *mark(marker, epoch=1)), marker, **slurm)
    os.killpg(job.pid, signum)  # torchrun's group, as a terminal or a scheduler signals it
    signalled = time.monotonic()
    _, err = job.communicate(timeout=STOP_LIMIT)
    assert_nothing_left(tmp_path, signalled)
    name = signal.Signals(signum).name
    # torchrun ends with its own exit code and SignalException; the ranks' paragraph comes once
    assert err.count("lightseg: error:") == 1, err[-3000:]
    assert f"lightseg: error: Training stopped by {name} in epoch 1 at global step 5" in err
    folder = only_run(tmp_path)
    assert folder.status == "interrupted" and not folder.metrics.exists()
    assert torch.load(folder.last, weights_only=True)["global_step"] == 3 + 2
    if slurm:  # by rank 0 alone
        assert calls.read_text().split() == ["requeue", "123"]
        assert "The SLURM job is requeued" in err
    if signum != signal.SIGTERM:
        return
    resumed = run(torchrun(tmp_path, data_dir, "data.num_workers=0"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert folder.status == "finished"
    assert_same_result(folder, reference)

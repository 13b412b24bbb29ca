"""2-process runs (``trainer=ddp_sim``: ddp_spawn over gloo) as the command line starts them: the
numbers they write are one process's for the same weights, and a stop signal to the process
group ends every process of the job with ``last.ckpt`` saved."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lightseg.experiment import build
from tests.test_faults import (
    REPOSITORY,
    assert_same_result,
    command,
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
    done = run(ddp_command(tmp_path, data_dir, "data.num_workers=0"))
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
        "per_image": {"_target_": "lightseg.callbacks.PerImageResults", "folder": str(folder)}
    }
    experiment = build(cfg, enable_progress_bar=False, enable_model_summary=False)
    trainer, module, data = experiment.trainer, experiment.module, experiment.datamodule
    metrics = {}
    for evaluate in (trainer.validate, trainer.test):
        results = evaluate(module, datamodule=data, ckpt_path=str(run.best), verbose=False)
        metrics.update(results[0])
    return metrics, per_image_rows(folder / "per_image.csv")


def per_image_rows(path: Path) -> list[dict]:
    with path.open() as file:
        return sorted(csv.DictReader(file), key=lambda row: row["id"])


@pytest.mark.slow  # ~70 s on 2 busy cores: three launches of 2 processes
def test_ddp_run_writes_the_metrics_one_process_gives_its_best_weights(tmp_path, reference):
    folder = reference["folder"]
    written = json.loads(folder.metrics.read_text())
    expected, rows = one_process(folder, tmp_path / "one")
    assert {k for k in written if not k.startswith("best/")} == expected.keys()
    assert 0.0 < expected["val/iou"] < 1.0 and "test/dice_per_image" in expected
    assert written == pytest.approx({**written, **expected}, abs=1e-5)
    assert per_image_rows(folder.per_image) == rows and len(rows) == 4  # each test image once


@pytest.mark.slow  # ~200 s on 2 busy cores, the resumed run included
@pytest.mark.parametrize("signum", [signal.SIGTERM])
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

    resumed = run(ddp_command(tmp_path, data_dir, "ckpt_path=last", "data.num_workers=0"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert only_run(tmp_path) == folder and folder.status == "finished"
    assert_same_result(folder, reference)

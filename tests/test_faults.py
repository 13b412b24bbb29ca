"""Faults as a scheduler makes them: signals to the whole process group, with DataLoader workers
running, mid-epoch; a SIGKILL; a SLURM requeue; two runs in one folder. Each interrupted run is
resumed from the command line and must end with the same numbers as one that never stopped.
"""

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

from lightseg import CONFIG_DIR
from lightseg.checkpoints import check_resumable
from lightseg.runs import RunFolder
from tests.runs import run_cli

REPOSITORY = Path(CONFIG_DIR).parent
MAX_EPOCHS = 3


def command(tmp_path: Path, data_dir: Path, *extra: str) -> list[str]:
    """``python -m lightseg.train`` on the demo: 3 epochs of 3 batches, 2 loader workers."""
    return [
        sys.executable,
        "-m",
        "lightseg.train",
        "experiment=demo",
        "trainer.accelerator=cpu",
        f"trainer.max_epochs={MAX_EPOCHS}",
        "trainer.deterministic=true",
        "trainer.log_every_n_steps=1",
        "logger=csv",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        "callbacks.prediction_overlays=null",
        "data.num_workers=2",
        "data.batch_size=4",
        "data.image_size=64",
        "data.source.num_cases=20",
        "seed=7",
        "print_config=false",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
        *extra,
    ]


def environment(**extra: str) -> dict[str, str]:
    """The test's environment, with tests/ importable (the MarkAt callback) and one thread."""
    paths = [str(REPOSITORY), str(REPOSITORY / "src"), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def mark(path: Path, epoch: int = 1, batch_idx: int = 1, stage: str = "fit") -> list[str]:
    return [
        "+callbacks.mark._target_=tests.runs.MarkAt",
        f"+callbacks.mark.path={path}",
        f"+callbacks.mark.epoch={epoch}",
        f"+callbacks.mark.batch_idx={batch_idx}",
        f"+callbacks.mark.stage={stage}",
    ]


def run(args: list[str], env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=REPOSITORY, env=env or environment(), capture_output=True, text=True, timeout=600
    )


def signal_group_at_mark(args, marker: Path, signum: int, env=None) -> subprocess.CompletedProcess:
    """Start the run in a process group of its own and signal the whole group at the mark."""
    process = subprocess.Popen(
        args,
        cwd=REPOSITORY,
        env=env or environment(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            out, err = process.communicate()
            pytest.fail(f"the run ended before the mark:\n{out[-2000:]}\n{err[-3000:]}")
        time.sleep(0.05)
    os.killpg(process.pid, signum)  # as SLURM, `timeout` and Ctrl+C do: every process
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def only_run(tmp_path: Path) -> RunFolder:
    (folder,) = (tmp_path / "logs" / "demo" / "runs").iterdir()
    return RunFolder(folder)


def final_numbers(run: RunFolder) -> dict:
    metrics = json.loads(run.metrics.read_text())
    weights = torch.load(run.last, weights_only=True)["state_dict"]
    return {"metrics": metrics, "weights": weights}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_dir) -> dict:
    """The uninterrupted run every interrupted one must reproduce."""
    tmp_path = tmp_path_factory.mktemp("reference")
    done = run(command(tmp_path, data_dir))
    assert done.returncode == 0, done.stderr[-3000:]
    folder = only_run(tmp_path)
    return {"folder": folder, **final_numbers(folder)}


def csv_rows(run: RunFolder) -> list[dict[str, str]]:
    """The run's CSV log, its parts one after another, each row's non-empty values."""
    parts = run.csv_log.parent.glob("version_*/metrics.csv")
    return [
        {key: value for key, value in row.items() if value}
        for part in sorted(parts, key=lambda p: int(p.parent.name.removeprefix("version_")))
        for row in csv.DictReader(part.open(newline=""))
    ]


def assert_same_result(run: RunFolder, reference: dict) -> None:
    numbers = final_numbers(run)
    assert numbers["metrics"] == reference["metrics"]
    for name, value in reference["weights"].items():
        assert torch.equal(numbers["weights"][name], value), name


def test_last_is_the_final_epoch_and_best_is_the_best_weights_only(reference):
    folder = reference["folder"]
    last = torch.load(folder.last, weights_only=True)
    assert last["epoch"] == MAX_EPOCHS - 1 and last["global_step"] == 3 * MAX_EPOCHS
    best = torch.load(folder.best, weights_only=True)
    assert "optimizer_states" not in best and "optimizer_states" in last
    metrics = reference["metrics"]
    assert (metrics["best/epoch"], metrics["best/step"]) == (best["epoch"], best["global_step"])
    assert folder.best.stat().st_size < 0.6 * folder.last.stat().st_size


def test_sigterm_to_the_process_group_mid_epoch_is_a_clean_stop_then_resume(
    tmp_path, data_dir, reference
):
    marker = tmp_path / "mark"
    args = command(tmp_path, data_dir, *mark(marker))
    stopped = signal_group_at_mark(args, marker, signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "killed by signal" not in stopped.stderr
    assert "Training stopped by SIGTERM in epoch 1" in stopped.stderr
    folder = only_run(tmp_path)
    assert folder.status == "interrupted" and not folder.metrics.exists()
    saved = torch.load(folder.last, weights_only=True)
    assert saved["epoch"] == 1 and saved["global_step"] == 3 + 2  # mid-epoch: 2 of 3 batches
    check_resumable(folder.last)

    resumed = run(command(tmp_path, data_dir, "ckpt_path=last", "data.num_workers=0"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert only_run(tmp_path) == folder  # in its own folder
    assert_same_result(folder, reference)
    info = folder.info()
    assert info["status"] == "finished"
    resume = info["resumes"][0]  # as typed, and as composed (the run's own, this one's on top)
    assert resume["command"].endswith("ckpt_path=last data.num_workers=0")
    assert resume["overrides"][-2:] == ["data.num_workers=0", f"ckpt_path='{folder.last}'"]
    original = (folder.hydra / "overrides.yaml").read_text()
    assert "data.num_workers=2" in original and "ckpt_path" not in original  # not rewritten


def test_sigkill_leaves_a_whole_last_checkpoint_and_resume_auto_continues(
    tmp_path, data_dir, reference
):
    marker = tmp_path / "mark"
    killed = signal_group_at_mark(
        command(tmp_path, data_dir, *mark(marker)), marker, signal.SIGKILL
    )
    assert killed.returncode == -signal.SIGKILL
    folder = only_run(tmp_path)
    assert folder.status == "running"  # killed without notice
    check_resumable(folder.last)  # the end of epoch 0: whole, never torn
    assert torch.load(folder.last, weights_only=True)["epoch"] == 0
    resumed = run(command(tmp_path, data_dir, "resume=auto"))  # the dead run's lock is free
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert only_run(tmp_path) == folder
    assert_same_result(folder, reference)
    logged = csv_rows(folder)  # the replayed batches and validation are in the log once
    assert logged == csv_rows(reference["folder"]), "the resumed CSV log differs"


def test_slurm_requeue_on_sigusr1_continues_in_the_jobs_folder(tmp_path, data_dir, reference):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol_calls.txt"
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    env = environment(SLURM_JOB_ID="123", PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    job_folder = tmp_path / "logs" / "demo" / "runs" / "slurm-123"
    job = command(tmp_path, data_dir, f"hydra.run.dir={job_folder}", "resume=auto")
    marker = tmp_path / "mark"
    first = signal_group_at_mark([*job, *mark(marker)], marker, signal.SIGUSR1, env)
    assert first.returncode == 128 + signal.SIGUSR1, first.stderr[-3000:]
    assert calls.read_text().split() == ["requeue", "123"]
    assert "The SLURM job is requeued" in first.stderr
    info = RunFolder(job_folder).info()
    assert info["status"] == "interrupted" and info["owner"]["slurm_job_id"] == "123"
    again = run([*job, *mark(marker)], env)  # the requeued job runs the same command
    assert again.returncode == 0, again.stderr[-3000:]
    assert_same_result(RunFolder(job_folder), reference)


def test_sigterm_during_the_final_evaluation_is_recorded_and_resumable(
    tmp_path, data_dir, reference
):
    marker = tmp_path / "mark"
    args = command(tmp_path, data_dir, *mark(marker, batch_idx=0, stage="test"))
    stopped = signal_group_at_mark(args, marker, signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "while evaluating the best checkpoint" in stopped.stderr
    folder = only_run(tmp_path)
    assert folder.status == "interrupted" and not folder.metrics.exists()
    resumed = run(command(tmp_path, data_dir, "ckpt_path=last"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(folder.metrics.read_text()) == reference["metrics"]


def test_a_second_run_in_a_folder_a_live_run_holds_is_refused(
    tmp_path, data_dir, monkeypatch, capsys
):
    folder = tmp_path / "logs" / "demo" / "runs" / "shared"
    marker = tmp_path / "mark"
    first = subprocess.Popen(
        command(tmp_path, data_dir, f"hydra.run.dir={folder}", *mark(marker, epoch=0)),
        cwd=REPOSITORY,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    while not marker.exists():
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    config_before = (folder / "config.yaml").read_text()
    with pytest.raises(SystemExit) as exit_code:
        run_cli(monkeypatch, *command(tmp_path, data_dir, f"hydra.run.dir={folder}", "seed=8")[3:])
    assert exit_code.value.code == 1
    assert "is in use by another training process" in capsys.readouterr().err
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert (folder / "config.yaml").read_text() == config_before  # the first run, untouched
    assert RunFolder(folder).status == "finished"


def test_ctrl_c_in_a_terminal_stops_as_cleanly(tmp_path, data_dir):
    """Ctrl+C sends SIGINT to the terminal's whole foreground process group."""
    marker = tmp_path / "mark"
    stopped = signal_group_at_mark(
        command(tmp_path, data_dir, *mark(marker)), marker, signal.SIGINT
    )
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr[-3000:]
    assert "Traceback" not in stopped.stderr and "Training stopped by SIGINT" in stopped.stderr
    folder = only_run(tmp_path)
    assert folder.status == "interrupted"
    assert torch.load(folder.last, weights_only=True)["global_step"] == 3 + 2


def test_a_second_ctrl_c_stops_at_once_with_exit_code_130(tmp_path, data_dir):
    marker = tmp_path / "mark"
    process = subprocess.Popen(
        command(tmp_path, data_dir, *mark(marker, epoch=0)),  # the batch sleeps 3 s at the mark
        cwd=REPOSITORY,
        env=environment(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    while not marker.exists():
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # before the batch ends: stop now
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err and "lightseg: error: Stopped at once by a second" in err
    folder = only_run(tmp_path)
    assert folder.status == "interrupted" and not folder.last.exists()  # nothing saved yet

"""Stop signals: handlers installed while the trainer runs, a second Ctrl+C stops at once, SLURM,
DataLoader workers that leave stop signals to the main process."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from lightseg.callbacks import faults
from lightseg.callbacks.faults import CheckpointOnSignal, requeue_slurm_job
from lightseg.errors import TrainingInterrupted
from lightseg.utils.signals import worker_init


def test_handlers_record_the_signal_and_are_restored_after_fit():
    before = signal.getsignal(signal.SIGTERM)
    callback = CheckpointOnSignal()
    callback.setup(trainer=None, pl_module=None, stage="fit")
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # would end the process without the handler
        assert callback.received == signal.SIGTERM
        with pytest.raises(TrainingInterrupted, match="second Ctrl") as stopped:
            os.kill(os.getpid(), signal.SIGINT)  # a second request: Ctrl+C means now
        assert stopped.value.exit_code == 128 + signal.SIGINT  # 130, as a shell reports it
    finally:
        callback.teardown(trainer=None, pl_module=None, stage="fit")
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_handlers_replace_lightnings_which_are_registered_after_setup():
    """Lightning's SIGTERM handler broadcasts to the other ranks from inside the handler, in
    the middle of whatever collective is running: under DDP that breaks gloo."""
    before = signal.getsignal(signal.SIGTERM)
    callback = CheckpointOnSignal()
    callback.setup(trainer=None, pl_module=None, stage="fit")
    try:
        lightnings = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("Lightning's ran"))
        callback.on_train_start(trainer=None, pl_module=None)
        os.kill(os.getpid(), signal.SIGTERM)
        assert callback.received == signal.SIGTERM
        signal.signal(signal.SIGTERM, lightnings)  # Lightning's teardown puts back what it saw
    finally:
        callback.teardown(trainer=None, pl_module=None, stage="fit")
    assert signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(
    ("env", "job"),
    [
        ({"SLURM_JOB_ID": "42"}, "42"),
        ({"SLURM_JOB_ID": "7", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "3"}, "5_3"),
    ],
)
def test_requeue_names_the_job_or_array_task(monkeypatch, env, job):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    calls = []

    def scontrol(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(faults.subprocess, "run", scontrol)
    assert requeue_slurm_job()
    assert calls == [["scontrol", "requeue", job]]


def test_no_requeue_outside_slurm(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    assert requeue_slurm_job() is False


def test_dataloader_workers_ignore_stop_signals(monkeypatch):
    monkeypatch.setenv("PL_SEED_WORKERS", "0")
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    try:
        worker_init(0)
        assert all(signal.getsignal(s) is signal.SIG_IGN for s in previous)
        os.kill(os.getpid(), signal.SIGTERM)  # ignored: this process lives on
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_a_launchers_repeat_of_ctrl_c_is_not_a_second_ctrl_c():
    """torchrun and srun pass the terminal's SIGINT on to processes that got it already."""
    callback = CheckpointOnSignal()
    callback.setup(trainer=None, pl_module=None, stage="fit")
    try:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)  # at once: the same Ctrl+C, passed on
        assert callback.received == signal.SIGINT
        time.sleep(0.3)
        with pytest.raises(TrainingInterrupted, match="second Ctrl"):
            os.kill(os.getpid(), signal.SIGINT)  # a moment later: the user's second
    finally:
        callback.teardown(trainer=None, pl_module=None, stage="fit")

"""Stop signals: handlers installed only while fitting, a second Ctrl+C stops at once, SLURM."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from lightseg.callbacks import faults
from lightseg.callbacks.faults import CheckpointOnSignal, requeue_slurm_job


def test_handlers_record_the_signal_and_are_restored_after_fit():
    before = signal.getsignal(signal.SIGTERM)
    callback = CheckpointOnSignal()
    callback.on_train_start(trainer=None, pl_module=None)
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # would end the process without the handler
        assert callback.received == signal.SIGTERM
        os.kill(os.getpid(), signal.SIGINT)  # a second request: Ctrl+C means now
    except KeyboardInterrupt:
        pass
    else:
        pytest.fail("the second signal should raise KeyboardInterrupt")
    finally:
        callback.on_train_end(trainer=None, pl_module=None)
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

"""One lock implementation: the run folder's (refuses a live owner, by name) and the builds'
(waits its turn); both released by the operating system when their process dies."""

from __future__ import annotations

import errno
import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lightseg.errors import LightsegError
from lightseg.utils import locks
from lightseg.utils.locks import RUN_LOCK, RunLock, file_lock, held_by_live_process

HOLD = """
import sys, time
from lightseg.utils.locks import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_run_lock_is_refused_naming_the_owner_until_sigkill_releases_it(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        owner = held_by_live_process(tmp_path)
        assert owner["pid"] == holder.pid and owner["host"] == socket.gethostname()
        with pytest.raises(LightsegError) as refused:
            RunLock(tmp_path).acquire()
        assert f"in use by another training process (PID {holder.pid} on " in str(refused.value)
        assert str(tmp_path) in str(refused.value)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    assert holder.returncode == -signal.SIGKILL
    assert held_by_live_process(tmp_path) is None  # the kernel released it
    with RunLock(tmp_path) as lock:
        assert lock.owner["pid"] == os.getpid()
        assert json.loads((tmp_path / RUN_LOCK).read_text())["pid"] == os.getpid()
    assert json.loads((tmp_path / RUN_LOCK).read_text())["released"] is True


@pytest.fixture
def no_flock(monkeypatch):
    """A file system without flock (some cluster mounts)."""

    def flock(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(locks.fcntl, "flock", flock)


def write_owner(folder: Path, **owner) -> None:
    record = {"host": socket.gethostname(), "since": "then", **owner}
    (folder / RUN_LOCK).write_text(json.dumps(record))


def test_without_flock_a_live_pid_on_this_host_holds_the_folder(tmp_path, no_flock, caplog):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        write_owner(tmp_path, pid=sleeper.pid)
        assert held_by_live_process(tmp_path)["pid"] == sleeper.pid
        with pytest.raises(LightsegError, match=f"PID {sleeper.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert held_by_live_process(tmp_path) is None  # that PID is gone
    caplog.set_level(logging.WARNING)
    with RunLock(tmp_path):
        assert held_by_live_process(tmp_path)["pid"] == os.getpid()
    assert f"held by PID {sleeper.pid}" in caplog.text and "taking it over" in caplog.text
    assert held_by_live_process(tmp_path) is None  # released


def test_without_flock_another_hosts_owner_cannot_be_checked_so_it_warns(
    tmp_path, no_flock, caplog
):
    write_owner(tmp_path, host="elsewhere", pid=1)
    assert held_by_live_process(tmp_path) is None
    caplog.set_level(logging.WARNING)
    with RunLock(tmp_path):
        pass
    assert f"cannot tell whether the process holding {tmp_path} (PID 1 on elsewhere" in (
        caplog.text
    )
    assert "Going on unguarded" in caplog.text


def build(lock: str, log: str, name: str) -> None:
    with file_lock(lock, "a test build"):
        with open(log, "a") as file:
            file.write(f"{name} start\n")
        time.sleep(0.3)
        with open(log, "a") as file:
            file.write(f"{name} end\n")


def test_builds_wait_their_turn(tmp_path):
    log = tmp_path / "log.txt"
    spawn = multiprocessing.get_context("spawn")
    workers = [
        spawn.Process(target=build, args=(str(tmp_path / "x.lock"), str(log), name))
        for name in "ab"
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0]
    lines = log.read_text().split()
    assert lines[0::4] == lines[2::4]  # one build starts and ends before the other starts
    assert lines[1::2] == ["start", "end"] * 2


def test_a_build_lock_is_released_when_its_block_raises_and_without_flock_warns(
    tmp_path, monkeypatch, caplog
):
    with pytest.raises(RuntimeError), file_lock(tmp_path / "x.lock", "a build"):
        raise RuntimeError("failed build")
    with open(tmp_path / "x.lock", "rb") as handle:  # free again
        locks.fcntl.flock(handle, locks.fcntl.LOCK_EX | locks.fcntl.LOCK_NB)
    ran = []

    def flock(handle, operation):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")

    monkeypatch.setattr(locks.fcntl, "flock", flock)
    caplog.set_level(logging.WARNING)
    with file_lock(tmp_path / "y.lock", "a build"):
        ran.append(True)
    assert ran == [True] and "a build runs unguarded" in caplog.text

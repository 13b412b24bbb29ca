"""One run, one folder: ``run.lock`` is held by the process that trains there.

The lock is an ``flock`` on ``<run>/run.lock``: the operating system releases it when its
process ends, however it ends (SIGKILL included), so a live run is told apart from a dead one
without guessing. The file says who holds it (host, PID, SLURM job, start, heartbeat) for the
error a second process gets. Where the file system has no ``flock`` (some cluster mounts),
the recorded owner decides: alive if it is this host's live PID, or another host's whose
heartbeat (rewritten every :data:`HEARTBEAT_S` seconds) is younger than :data:`STALE_S`.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from lightseg.errors import LightsegError
from lightseg.runs.folder import RunFolder, read_json
from lightseg.utils.locks import NO_FLOCK

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
STALE_S = 600.0


def owner_record() -> dict[str, Any]:
    """Who this process is, for run.lock and run_info.json."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "since": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recorded_owner_alive(owner: dict[str, Any] | None) -> bool:
    if not owner or owner.get("released"):
        return False
    if owner.get("host") == socket.gethostname():
        return _pid_alive(int(owner.get("pid", -1)))
    return time.time() - float(owner.get("heartbeat", 0)) < STALE_S


def held_by_live_process(folder: str | Path) -> dict[str, Any] | None:
    """The owner of ``<folder>/run.lock`` if a live process holds it, else None."""
    path = RunFolder(folder).lock
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return read_json(path) or {}
            except OSError as error:
                if error.errno not in NO_FLOCK:
                    raise
                owner = read_json(path)
                return owner if _recorded_owner_alive(owner) else None
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return None
    return None


def describe(owner: dict[str, Any]) -> str:
    job = f", SLURM job {owner['slurm_job_id']}" if owner.get("slurm_job_id") else ""
    return (
        f"PID {owner.get('pid', '?')} on {owner.get('host', '?')}{job}, since {owner.get('since')}"
    )


class RunLock:
    """Hold ``<folder>/run.lock`` for the life of a training process (a context manager)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = RunFolder(folder).lock
        self.handle = None
        self.owner: dict[str, Any] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        previous = read_json(self.path)
        handle = open(self.path, "a+b")  # noqa: SIM115  (held until release)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise self._in_use(read_json(self.path) or previous or {}) from None
        except OSError as error:
            if error.errno not in NO_FLOCK:
                handle.close()
                raise
            if _recorded_owner_alive(previous):
                handle.close()
                raise self._in_use(previous) from None
        if previous and not previous.get("released"):
            log.warning(
                "Run folder %s was held by %s, which ended without releasing it; taking it over.",
                self.path.parent,
                describe(previous),
            )
        self.handle, self.owner = handle, owner_record()
        self._write()
        self._thread = threading.Thread(target=self._beat, name="run-lock-heartbeat", daemon=True)
        self._thread.start()

    def _in_use(self, owner: dict[str, Any]) -> LightsegError:
        return LightsegError(
            f"Run folder '{self.path.parent}' is in use by another training process "
            f"({describe(owner)}). One folder holds one run: wait for that run to end, or "
            "start this one elsewhere (leave hydra.run.dir out for a new folder)."
        )

    def _write(self, **extra: Any) -> None:
        record = {**self.owner, "heartbeat": time.time(), **extra}
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(json.dumps(record).encode())
        self.handle.flush()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._write()
            except (OSError, ValueError):  # closed at release, or the disk went away
                return

    def release(self) -> None:
        if self.handle is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._write(released=True)
            fcntl.flock(self.handle, fcntl.LOCK_UN)
        finally:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

"""File locks by ``flock``, which the system releases however its process ends (SIGKILL too).
:func:`file_lock` waits its turn; :class:`RunLock` never waits: a second process training in a
run folder is refused, naming the owner. Without ``flock`` the run lock trusts a recorded owner
it can check (a PID on this host), else goes on unguarded with a warning."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from lightseg.errors import LightsegError

log = logging.getLogger(__name__)

#: errno values of a file system without flock.
NO_FLOCK = {errno.ENOLCK, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}
RUN_LOCK = "run.lock"


def owner_record() -> dict[str, Any]:
    """Who this process is, for lock files and run_info.json."""
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "since": datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def describe(owner: dict[str, Any]) -> str:
    """``PID 123 on node7, SLURM job 456, since <time>``."""
    job = f", SLURM job {owner['slurm_job_id']}" if owner.get("slurm_job_id") else ""
    return (
        f"PID {owner.get('pid', '?')} on {owner.get('host', '?')}{job}, since {owner.get('since')}"
    )


def _lock(handle: IO[bytes], wait: bool) -> bool | None:
    """Lock ``handle``: True once held, False if another process holds it (``wait=False``),
    None where the file system has no ``flock``."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno not in NO_FLOCK:
            raise
        return None
    return True


def _record(handle: IO[bytes], owner: dict[str, Any]) -> None:
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps(owner).encode())
    handle.flush()


def _recorded(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _alive_here(owner: dict[str, Any] | None) -> bool:
    """Whether ``owner`` (not released) is a live process of this host."""
    if not owner or owner.get("released") or owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(owner.get("pid", -1)), 0)
    except PermissionError:  # alive, another user's
        return True
    except (ProcessLookupError, ValueError, TypeError, OverflowError):
        return False
    return True


@contextlib.contextmanager
def file_lock(path: str | Path, what: str = "") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the block, waiting for it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        held = _lock(handle, wait=False)
        if held is False:
            log.info("Waiting for another process to finish %s (%s)", what or "its work", path)
            held = _lock(handle, wait=True)
        if held is None:
            log.warning("No file locks on this file system (%s): %s runs unguarded.", path, what)
            yield
            return
        try:
            _record(handle, {**owner_record(), "what": what})
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def held_by_live_process(folder: str | Path) -> dict[str, Any] | None:
    """The recorded owner of ``<folder>/run.lock`` while a live process holds it, else None."""
    path = Path(folder) / RUN_LOCK
    try:
        with open(path, "rb") as handle:
            held = _lock(handle, wait=False)  # True: ours until the file closes, so nobody's
    except OSError:  # no lock file (or none readable): nobody holds it
        return None
    owner = _recorded(path)
    if held is False:
        return owner or {}
    return owner if held is None and _alive_here(owner) else None


class RunLock:
    """Hold ``<folder>/run.lock`` while training there (a context manager that never waits)."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / RUN_LOCK
        self.handle: IO[bytes] | None = None
        self.owner: dict[str, Any] = {}
        self.flocked = False  # False on a file system without flock

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        previous = _recorded(self.path)
        handle = open(self.path, "a+b")  # noqa: SIM115  (held until release)
        held = _lock(handle, wait=False)
        if held is False or (held is None and _alive_here(previous)):
            handle.close()
            raise LightsegError(
                f"Run folder '{self.path.parent}' is in use by another training process "
                f"({describe(_recorded(self.path) or previous or {})}). One folder holds one "
                "run: wait for that run to end, or start this one elsewhere (leave "
                "hydra.run.dir out for a new folder)."
            )
        if previous and not previous.get("released"):
            unknowable = held is None and previous.get("host") != socket.gethostname()
            log.warning(
                "No file locks on this file system: cannot tell whether the process holding "
                "%s (%s) still trains. Going on unguarded; make sure only one process trains "
                "there."
                if unknowable
                else "Run folder %s was held by %s, which ended without releasing it; taking "
                "it over.",
                self.path.parent,
                describe(previous),
            )
        self.handle, self.owner, self.flocked = handle, owner_record(), bool(held)
        _record(handle, self.owner)

    def release(self) -> None:
        if self.handle is None:
            return
        try:
            _record(self.handle, {**self.owner, "released": True})
            if self.flocked:
                fcntl.flock(self.handle, fcntl.LOCK_UN)
        finally:
            self.handle.close()
            self.handle = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

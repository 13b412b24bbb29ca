"""Exclusive file locks for work that several processes (or nodes) may try to do at once.

Data preparation runs on every node that trains (Lightning calls ``prepare_data`` once per node)
and in every process that starts a run; on shared storage they all see the same folder. The one
that gets the lock does the work; the others wait, then find it done.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: errno values meaning "this file system does not do flock" (some cluster mounts).
NO_FLOCK = {errno.ENOLCK, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


@contextlib.contextmanager
def file_lock(path: str | Path, what: str = "") -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) for the block.

    The operating system releases it when the process ends, however it ends. On a file system
    without ``flock`` the block runs unlocked, with a warning.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        try:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("Waiting for another process to finish %s (%s)", what or "its work", path)
                fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as error:
            if error.errno not in NO_FLOCK:
                raise
            log.warning("No file locks on this file system (%s): %s runs unguarded.", path, what)
            yield
            return
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.uname().nodename} {os.getpid()}\n".encode())
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)

"""Stop signals, as schedulers send them: to the whole process group, DataLoader workers too.
A worker that dies of SIGTERM turns a clean stop into a crash, so workers ignore them: the main
process decides, saves its checkpoint, and shuts its workers down itself."""

from __future__ import annotations

import os
import signal

from lightning.fabric.utilities.seed import pl_worker_init_function


def stop_signals() -> list[signal.Signals]:
    """SIGTERM, SIGINT and SIGUSR1: what SLURM sends before pre-emption or the time limit
    (``--signal=USR1@90``)."""
    names = ("SIGTERM", "SIGINT", "SIGUSR1")
    return [getattr(signal, name) for name in names if hasattr(signal, name)]


def worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: ignore stop signals (the main process handles them), and
    seed the worker as Lightning would (``seed_everything(workers=True)``)."""
    for signum in stop_signals():
        signal.signal(signum, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", "0")):
        pl_worker_init_function(worker_id)

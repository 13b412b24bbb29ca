"""User-facing errors: one clear paragraph, a non-zero exit, no traceback; in a sweep (-m), one
per failed job and then a summary (:func:`lightseg.config.app`)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from rich.console import Console
from rich.panel import Panel

from lightseg.utils.ranks import is_first_process


class LightsegError(Exception):
    """A mistake the user can fix (missing data, bad config, bad file); the message says how."""

    exit_code = 1


class SweepRefused(LightsegError):
    """A sweep (-m) that no job of it can run as asked: it stops before the next job."""


class TrainingInterrupted(LightsegError):
    """Training stopped on a signal after saving its state; the exit code is 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


class TrialPruned(LightsegError):
    """An Optuna trial stopped by its study's pruner (lightseg.callbacks.pruning): not a failure,
    said in one line, exit code 0; the search goes on with its next trial."""

    exit_code = 0


def _chain(
    error: BaseException | None, context: type[BaseException] = BaseException
) -> Iterator[BaseException]:
    """``error`` and the errors behind it: ``__cause__``, else ``__context__`` of a ``context``."""
    seen = set()
    while error is not None and id(error) not in seen:
        yield error
        seen.add(id(error))
        error = error.__cause__ or (error.__context__ if isinstance(error, context) else None)


def disk_full(error: BaseException | None) -> bool:
    """Whether ``error`` is a full disk or quota, also where a writer wraps the OSError:
    ``torch.save`` raises ``RuntimeError: ... unexpected pos`` with the ENOSPC as its context."""
    return any(
        (isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT))
        or (isinstance(cause, RuntimeError) and "unexpected pos" in str(cause))
        for cause in _chain(error)
    )


def no_room(
    folder: str | Path, what: str, needed: int | None = None, fix: str = ""
) -> LightsegError:
    """The paragraph for a full disk: where, how much is free and (if known) needed, the fix."""
    folder = Path(folder)
    existing = next((p for p in (folder, *folder.parents) if p.exists()), Path("."))
    free = f"{_size(shutil.disk_usage(existing).free)} free"
    if needed:
        free += f", about {_size(needed)} needed"
    return LightsegError(
        f"The disk is full: {what} could not be written in '{folder}' ({free}). Files written "
        f"before are intact and the partial one was removed. Free space there{fix}, and run again."
    )


@contextlib.contextmanager
def room_to_write(
    folder: str | Path, what: str, needed: Callable[[], int] | None = None, fix: str = ""
) -> Iterator[None]:
    """A full disk inside the block as :func:`no_room`'s paragraph (``needed``: estimated then);
    the block removes its own partial files."""
    try:
        yield
    except Exception as error:
        if not disk_full(error):
            raise
        raise no_room(folder, what, needed() if needed else None, fix) from None


#: Marks a file still being written: ``.<name>.partial-<PID>`` next to the file it becomes.
PARTIAL = ".partial-"


@contextlib.contextmanager
def written_whole(path: Path) -> Iterator[Path]:
    """A file of this process's own next to ``path`` for the block to write; it then replaces
    ``path`` in one step (``os.replace``): readers never find a part."""
    temp = path.with_name(f".{path.name}{PARTIAL}{os.getpid()}")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _size(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB"):
        if count < 1024:
            return f"{count:.0f} bytes" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


@contextlib.contextmanager
def instantiating(where: str, reason: Callable[[BaseException], str] = str) -> Iterator[None]:
    """Undo Hydra's ``instantiate`` wrapper of an error in the block: a LightsegError as raised,
    any other as ``<where>: <type>: <reason(error)>``."""
    try:
        yield
    except InstantiationException as error:
        cause = error.__cause__ or error
        if isinstance(cause, LightsegError):
            raise cause from None
        raise LightsegError(f"{where}: {type(cause).__name__}: {reason(cause)}") from None


def lightseg_cause(error: BaseException | None) -> LightsegError | None:
    """The LightsegError behind ``error``: Hydra's instantiate wraps errors raised inside it
    (``__cause__``); OmegaConf re-raises a resolver's error as its own (``__context__``);
    ddp_spawn's ranks hand theirs over as traceback text."""
    for cause in _chain(error, context=OmegaConfBaseException):
        if isinstance(cause, LightsegError):
            return cause
        if type(cause).__name__ == "ProcessRaisedException":  # torch.multiprocessing's
            _, marker, raised = str(cause).rpartition(f"{__name__}.")
            name, _, message = raised.partition(": ")
            kind = globals().get(name)
            if marker and isinstance(kind, type) and issubclass(kind, LightsegError):
                return LightsegError(message.strip())
    return None


def user_message(error: BaseException) -> str | None:
    """The paragraph to show for a user mistake, or None for a genuine bug."""
    cause = lightseg_cause(error)
    if cause is not None:
        message = str(cause)
        # DataLoader workers re-raise with the worker's traceback folded into the message.
        marker = f"{type(cause).__name__}: "
        if "Original Traceback" in message and marker in message:
            message = message.rsplit(marker, 1)[1]
        return message.strip()
    if disk_full(error):  # a write site without room_to_write: the file is all that is known
        where = getattr(error, "filename", None)
        folder = f" in '{Path(where).parent}'" if where else ""
        return (
            f"The disk is full ({error}): lightseg could not write{folder}. Free space on the "
            "disk of the run's folder (paths.log_dir) or of the output, and run again."
        )
    if isinstance(error.__cause__, MisconfigurationException):  # raised in Trainer(...)
        return f"Trainer setting error: {error.__cause__} (a trainer.* key)."
    if isinstance(error, InstantiationException):  # e.g. a misspelt key passed to a class
        return f"{error}\nCheck that config group's keys against the class it builds."
    if isinstance(error, MissingMandatoryValue):
        return (
            f"The config value {error.full_key} is required but not set (???). Set it on the "
            f"command line, e.g. {error.full_key}=..., or in your config file."
        )
    if isinstance(error, OmegaConfBaseException):  # interpolations, types of config values
        return f"Config error: {str(error).strip()}"
    if isinstance(error, MisconfigurationException):  # Lightning's "this setting is wrong"
        return f"Trainer setting error: {error}"
    return None


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Print a user mistake raised inside the block as a paragraph and exit with its code."""
    try:
        yield
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        cause = lightseg_cause(error)
        # a stop signal reaches every process of a torchrun / srun job: rank 0 says it once
        if isinstance(cause, TrialPruned):
            print(f"lightseg: {message}", file=sys.stderr)
        elif not isinstance(cause, TrainingInterrupted) or is_first_process():
            show_error(message)
        sys.exit(cause.exit_code if cause is not None else 1)


def show_error(message: str) -> None:
    """The paragraph on stderr: a red panel on a terminal, one greppable line elsewhere."""
    console = Console(stderr=True)
    if console.is_terminal:
        console.print(Panel(message, title="lightseg: error", border_style="red", expand=False))
    else:  # logs and pipes: one unwrapped paragraph that grep can find
        print(f"lightseg: error: {message}", file=sys.stderr)


def one_line(message: str, limit: int = 400) -> str:
    """A reason as one line of at most ``limit`` characters, for summaries and tables."""
    text = " ".join(message.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class SweepJob:
    """One job of a sweep (-m): where it ran, and the paragraph it failed with, if it did."""

    number: int
    folder: str
    overrides: list[str]
    sweep_dir: str
    failure: str | None = None

    def run(self, task: Callable[[Any], Any], cfg: Any) -> Any:
        """``task(cfg)``; an error is shown and remembered and None returned, so that the sweep
        goes on (Optuna marks the trial FAIL); a stop signal and SweepRefused stop it."""
        try:
            return task(cfg)
        except Exception as error:
            if isinstance(lightseg_cause(error), TrainingInterrupted | SweepRefused):
                raise
            self.failure = user_message(error)
            if self.failure is None:  # not a user's mistake: the traceback shows where
                traceback.print_exc()
                self.failure = f"{type(error).__name__}: {error}"
            else:
                show_error(self.failure)
            return None


def sweep_summary(jobs: list[SweepJob]) -> str:
    """One paragraph: which jobs failed (number, folder, its own overrides) and why."""
    failed = [job for job in jobs if job.failure]
    shared = set.intersection(*(set(job.overrides) for job in jobs)) if len(jobs) > 1 else set()
    listed = "; ".join(
        f"job {job.number} ({job.folder}, {' '.join(o for o in job.overrides if o not in shared)})"
        f": {one_line(job.failure or '').rstrip('.')}"
        for job in failed
    )
    return (
        f"{len(failed)} of {len(jobs)} sweep jobs failed (the others ran to their end): {listed}. "
        "Each job's run_info.json records how it ended; python -m lightseg.tools.table "
        f"runs={jobs[0].sweep_dir} tabulates the sweep and lists the failed jobs."
    )

"""User-facing errors: one clear paragraph, a non-zero exit, no traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from hydra.errors import InstantiationException
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from rich.console import Console
from rich.panel import Panel


class LightsegError(Exception):
    """A mistake the user can fix (missing data, bad config, bad file); the message says how."""

    exit_code = 1


class TrainingInterrupted(LightsegError):
    """Training stopped on a signal after saving its state; the exit code is 128 + signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + int(signum)


def lightseg_cause(error: BaseException | None) -> LightsegError | None:
    """The LightsegError behind ``error``: Hydra's instantiate wraps errors raised inside it
    (``__cause__``); OmegaConf re-raises a resolver's error as its own (``__context__``)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, LightsegError):
            return error
        seen.add(id(error))
        wrapped = error.__context__ if isinstance(error, OmegaConfBaseException) else None
        error = error.__cause__ or wrapped
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
    """Print a user mistake raised inside the block as a paragraph and exit with its code
    (1, or 128 + signal for a run stopped by a signal)."""
    try:
        yield
    except Exception as error:
        message = user_message(error)
        if message is None:
            raise
        console = Console(stderr=True)
        if console.is_terminal:
            console.print(Panel(message, title="lightseg: error", border_style="red", expand=False))
        else:  # logs and pipes: one unwrapped paragraph that grep can find
            print(f"lightseg: error: {message}", file=sys.stderr)
        cause = lightseg_cause(error)
        sys.exit(cause.exit_code if cause is not None else 1)

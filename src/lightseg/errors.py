"""User-facing errors: one clear paragraph, a non-zero exit, no traceback."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

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


def _clean_message(error: BaseException) -> str:
    message = str(error)
    # DataLoader workers re-raise with the worker's traceback folded into the message.
    marker = f"{type(error).__name__}: "
    if "Original Traceback" in message and marker in message:
        message = message.rsplit(marker, 1)[1]
    return message.strip()


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn a LightsegError raised inside the block into a printed paragraph and its exit code."""
    try:
        yield
    except LightsegError as error:
        Console(stderr=True).print(
            Panel(_clean_message(error), title="lightseg: error", border_style="red", expand=False)
        )
        sys.exit(error.exit_code)

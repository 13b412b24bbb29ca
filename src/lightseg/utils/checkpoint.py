"""Checkpoint files that are never half-written, and the random state that resumes need.

Lightning's own writer stages the file in the system temp folder and moves it into place; when
that folder is on another file system (often: /tmp on tmpfs) the move is a copy, and a kill
during the copy leaves a truncated ``last.ckpt``. Here the file is written next to its target
and renamed, which POSIX guarantees to be all-or-nothing.
"""

from __future__ import annotations

import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightseg.errors import LightsegError

TEMP_INFIX = ".partial-"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes ``path`` via a temporary file in the same folder, fsync and ``os.replace``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None or not _is_local(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, Path(path))


def _is_local(path) -> bool:
    return type(get_filesystem(str(path))).__name__ == "LocalFileSystem"


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path``: either the old file or the complete new one, never a part.

    The temporary file is this process's own (its PID in the name); files that other, killed,
    processes left are removed by :func:`remove_partial_files` when a run resumes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}{TEMP_INFIX}{os.getpid()}")
    try:
        with open(temp, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a power cut could otherwise undo it)."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename is still atomic
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def random_states() -> dict[str, Any]:
    """The global random generators' states, as tensors and plain types (``weights_only`` loads)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    cuda = states.get("cuda")
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def check_readable(path: str | Path) -> None:
    """A clear error for a checkpoint that is not a complete PyTorch file (torn, truncated).

    Reads only the zip directory at the end of the file, which a torn write never has.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile) as error:
        raise LightsegError(
            f"Checkpoint '{path}' is damaged ({type(error).__name__}: {error}): it is not a "
            "complete PyTorch checkpoint, e.g. it was cut off while being copied. Use another "
            "checkpoint of the run (best.ckpt, or a copy), or start the run afresh without "
            "ckpt_path / resume."
        ) from None
    if not any(name.endswith("data.pkl") for name in names):
        raise LightsegError(f"'{path}' is a zip file but not a PyTorch checkpoint.")


def check_resumable(path: str | Path) -> None:
    """A clear error for a checkpoint training cannot continue from (torn, or weights only)."""
    check_readable(path)
    contents = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if "optimizer_states" not in contents or "loops" not in contents:
        raise LightsegError(
            f"Checkpoint '{path}' holds the weights only (best.ckpt does), not the optimizer and "
            "loop state a resume needs. Continue from the run's checkpoints/last.ckpt "
            "(ckpt_path=last), or start a new run."
        )


def checkpoint_position(path: str | Path) -> dict[str, int]:
    """The epoch and global step a checkpoint was saved at (read without loading weights)."""
    contents = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return {"epoch": int(contents.get("epoch", -1)), "step": int(contents.get("global_step", -1))}


@rank_zero_only
def remove_partial_files(folder: Path) -> None:
    """Delete temporary checkpoint files a killed process left behind (the caller holds the
    run's lock, so no live process is writing them)."""
    for stale in Path(folder).glob(f".*{TEMP_INFIX}*"):
        stale.unlink(missing_ok=True)

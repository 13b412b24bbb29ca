"""Checkpoints in one place: writing them whole, checking, reading and loading them.

Lightning's writer stages a checkpoint in the system temp folder, so a kill during the move from
another file system leaves a torn ``last.ckpt``; :class:`AtomicCheckpointIO` writes beside the
target and renames instead. A lightseg checkpoint describes itself in plain hyperparameters, so
:func:`load_module` needs nothing else. ``make calibrate`` stores its temperature beside the
checkpoint (``best.calibration.json``) with the checkpoint's SHA-256, so deleting the file undoes
it and one left beside a replaced checkpoint is refused (:func:`read_temperature`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import get_class
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightseg.errors import PARTIAL, LightsegError, room_to_write, written_whole
from lightseg.models import SegmentationModule, input_multiple
from lightseg.models.network import without_pretrained

#: Hyperparameters that make a checkpoint a lightseg checkpoint.
REQUIRED_HPARAMS = ("model", "classes", "normalization")
#: Training input size assumed for checkpoints that do not store one (hand-made ones).
DEFAULT_IMAGE_SIZE = (256, 256)
WHERE = "logs/<experiment>/runs/<time>/checkpoints/best.ckpt (and last.ckpt)"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes local checkpoints with :func:`atomic_save`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        local = type(get_filesystem(str(path))).__name__ == "LocalFileSystem"
        if storage_options is not None or not local:
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, Path(path))


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` whole (:func:`written_whole`, fsync); a full disk is one
    paragraph and the old file stays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fix = " or write the run elsewhere (paths.log_dir=...; ckpt_path=<its last.ckpt> to resume)"
    with (
        room_to_write(path.parent, f"checkpoint {path.name}", lambda: tensor_bytes(obj), fix),
        written_whole(path) as temp,
        open(temp, "wb") as file,
    ):
        torch.save(obj, file)
        file.flush()
        os.fsync(file.fileno())
    with contextlib.suppress(OSError):  # the rename made durable too, where a folder can be
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts and lists): about a checkpoint's size."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        obj = list(obj.values())
    return sum(map(tensor_bytes, obj)) if isinstance(obj, (list, tuple)) else 0


@rank_zero_only
def remove_partial_files(folder: Path) -> None:
    """Delete the temporary files killed writers left (the caller holds the run's lock)."""
    for stale in Path(folder).glob(f".*{PARTIAL}*"):
        stale.unlink(missing_ok=True)


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


def check_file(path: str | Path | None) -> Path:
    """``path`` as a Path, or a clear error if it names no checkpoint file."""
    if path is None or not str(path).strip():
        raise LightsegError(f"ckpt_path is empty: give a checkpoint file, e.g. {WHERE}.")
    path = Path(path)
    if path.is_dir():
        found = [p for p in (path / "checkpoints" / "best.ckpt", path / "best.ckpt") if p.is_file()]
        hint = f" This run's best checkpoint is '{found[0]}'." if found else ""
        raise LightsegError(
            f"ckpt_path='{path}' is a folder; give a checkpoint file: {WHERE}.{hint}"
        )
    if not path.is_file():
        hint = "" if path.suffix == ".ckpt" else " Checkpoints end in .ckpt."
        raise LightsegError(
            f"Checkpoint '{path}' does not exist.{hint} Training writes {WHERE}; pass one as "
            "ckpt_path=... ."
        )
    return path


def check_readable(path: str | Path) -> None:
    """A clear error for a torn or truncated checkpoint: reads only the zip directory at the
    file's end, which a torn write never has."""
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


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at ``path``, loaded safely (``weights_only``) and checked."""
    path = check_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as error:  # permissions, I/O: the file is fine, reading it is not
        raise LightsegError(
            f"Cannot read checkpoint '{path}': {error.strerror or error}."
        ) from None
    except Exception as error:  # pickle, zip and unsafe-type errors all mean the same here
        sentence = str(error).split(". ")[0].splitlines()[0][:200] if str(error) else ""
        raise LightsegError(
            f"Cannot read checkpoint '{path}' ({type(error).__name__}: {sentence}). "
            "It is damaged, still being written, or not a PyTorch checkpoint; use a best.ckpt or "
            "last.ckpt that a lightseg run wrote."
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or any(key not in hparams for key in REQUIRED_HPARAMS):
        raise LightsegError(
            f"'{path}' is not a lightseg checkpoint: it lacks the hyperparameters "
            f"{list(REQUIRED_HPARAMS)} that lightseg stores to rebuild the model. Use a "
            f"checkpoint written by `make train` ({WHERE})."
        )
    if "state_dict" not in checkpoint:
        raise LightsegError(f"Checkpoint '{path}' holds no weights (no 'state_dict').")
    if "_target_" not in (hparams.get("model") or {}):
        raise LightsegError(
            f"Checkpoint '{path}' names its network by model.arch only, as lightseg 0.1 wrote "
            "them; this version builds networks from model._target_. Retrain, or add the "
            "network's _target_ (configs/model/*.yaml) to hyper_parameters.model."
        )
    return checkpoint


def load_module(path: str | Path, device: str | torch.device = "cpu") -> SegmentationModule:
    """The trained module at ``path`` (its own class: a fork's subclass too), in eval mode."""
    checkpoint = read_checkpoint(path)
    name = checkpoint.get("module", "lightseg.models.SegmentationModule")
    module = build_module(name, checkpoint["hyper_parameters"], checkpoint["state_dict"], path)
    return module.to(device)


def build_module(
    name: str, hparams: dict, state_dict: dict, where: str | Path
) -> SegmentationModule:
    """Module class ``name`` built from its hyperparameters (no pretrained download) with the
    trained weights ``state_dict``: a checkpoint's, or a bundle's safetensors (``where``)."""
    hparams = {**hparams, "compile": False, "model": without_pretrained(hparams["model"])}
    try:
        module_class = get_class(name)
    except Exception as error:
        raise LightsegError(
            f"Checkpoint '{where}' was trained with the module {name}, which cannot be imported "
            f"here ({error.__cause__ or error}). Run from the fork's root, where it imports."
        ) from None
    module = module_class(**hparams)
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    # torchmetrics states are not saved; anything else missing means another architecture.
    missing = [k for k in missing if not k.startswith(("eval_metrics.", "eval_losses."))]
    if missing or unexpected:
        raise LightsegError(
            f"Checkpoint '{where}' does not match the model its hyperparameters describe "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}). Was it edited by hand?"
        )
    return module.eval()


@dataclass(frozen=True)
class ModelInput:
    """What a trained module takes, as its checkpoint says: ``channels`` (its normalisation's),
    sides in multiples of ``multiple`` (the network's ``input_multiple``), the training
    ``image_size`` (``stored``, else :data:`DEFAULT_IMAGE_SIZE`) and ``mode``, how validation
    fed images (``whole``: resized, ``slide``: at their own scale; None: unknown)."""

    channels: int
    multiple: int
    image_size: tuple[int, int]
    stored: bool
    mode: str | None


def model_input(module: SegmentationModule) -> ModelInput:
    stored = module.hparams.get("inference") or {}
    size = stored.get("image_size")
    return ModelInput(
        channels=int(module.normalize.mean.shape[1]),
        multiple=input_multiple(module.net),
        image_size=(int(size[0]), int(size[1])) if size else DEFAULT_IMAGE_SIZE,
        stored=bool(size),
        mode=stored.get("mode"),
    )


def calibration_path(checkpoint: str | Path) -> Path:
    """Where ``make calibrate`` stores a checkpoint's temperature: ``best.calibration.json``."""
    return Path(checkpoint).with_suffix(".calibration.json")


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB pieces (hashlib.file_digest needs Python 3.11)."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for piece in iter(lambda: file.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def write_calibration(checkpoint: str | Path, record: dict[str, Any]) -> Path:
    """Store ``record`` (the temperature and how it was fitted) beside ``checkpoint``, whole,
    with the checkpoint's digest added."""
    path = calibration_path(checkpoint)
    record = {**record, "checkpoint_sha256": file_digest(checkpoint)}
    with room_to_write(path.parent, path.name), written_whole(path) as temp:
        temp.write_text(json.dumps(record, indent=2))
    return path


def read_temperature(checkpoint: str | Path) -> float:
    """The temperature stored beside ``checkpoint``; 1 (the probabilities as trained) if none."""
    path = calibration_path(checkpoint)
    if not path.is_file():
        return 1.0
    try:
        record = json.loads(path.read_text())
        temperature, digest = record["temperature"], record["checkpoint_sha256"]
        number = isinstance(temperature, int | float) and not isinstance(temperature, bool)
        if not (number and 0 < temperature < math.inf):
            raise ValueError(f"temperature {temperature!r} is not a number > 0")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise LightsegError(
            f"Calibration file '{path}' is invalid ({type(error).__name__}: {error}); it should "
            f"hold the temperature that make calibrate fitted for '{checkpoint}'. Delete it (the "
            f"checkpoint is then used uncalibrated) or re-run make calibrate CKPT={checkpoint}."
        ) from None
    if digest != file_digest(checkpoint):
        raise LightsegError(
            f"Calibration file '{path}' was fitted for another version of '{checkpoint}' (the "
            "checkpoint changed since, e.g. training continued): its temperature does not "
            f"apply. Re-run make calibrate CKPT={checkpoint}, or delete the file."
        )
    return float(temperature)

"""Rebuild a trained model from its checkpoint and run it on images of any size.

A lightseg checkpoint describes itself: architecture, encoder, classes, normalisation and the
training input size are stored as plain hyperparameters, so ``load_module(path)`` needs nothing
else and loads with ``torch.load(weights_only=True)``.

:class:`Segmenter` turns images into class probabilities at their own resolution:

* ``whole``: resize to the training size, predict, resize the logits back;
* ``slide``: windows of the training size over the image at its own scale, with the logits of
  overlapping windows averaged (for images larger than what the model was trained on);

optionally averaged over test-time augmentations (horizontal flip, several scales).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lightseg.data.transforms import to_unit_range
from lightseg.errors import LightsegError
from lightseg.models import SegmentationModule, input_multiple
from lightseg.models.network import logits_of, nearest_multiple, without_pretrained

#: Hyperparameters that make a checkpoint a lightseg checkpoint.
REQUIRED_HPARAMS = ("model", "classes", "normalization")
#: Training input size assumed for checkpoints that do not store one (hand-made ones).
DEFAULT_IMAGE_SIZE = (256, 256)


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at ``path``, loaded safely (``weights_only``) and checked."""
    path = Path(path)
    if not path.is_file():
        hint = "" if path.suffix == ".ckpt" else " Checkpoints end in .ckpt."
        raise LightsegError(
            f"Checkpoint '{path}' does not exist.{hint} Training writes "
            "logs/<experiment>/runs/<time>/checkpoints/best.ckpt (and last.ckpt); pass one as "
            "ckpt_path=... ."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and unsafe-type errors all mean the same here
        raise LightsegError(
            f"Cannot read checkpoint '{path}' ({type(error).__name__}: {_first_sentence(error)}). "
            "It is damaged, still being written, or not a PyTorch checkpoint; use a best.ckpt or "
            "last.ckpt that a lightseg run wrote."
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or any(key not in hparams for key in REQUIRED_HPARAMS):
        raise LightsegError(
            f"'{path}' is not a lightseg checkpoint: it lacks the hyperparameters "
            f"{list(REQUIRED_HPARAMS)} that lightseg stores to rebuild the model. Use a "
            "checkpoint written by `make train` (logs/<experiment>/runs/<time>/checkpoints/)."
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


def stored_image_size(module: SegmentationModule) -> tuple[int, int] | None:
    """The training input size a checkpoint stores (``hparams.inference.image_size``), if any."""
    size = (module.hparams.get("inference") or {}).get("image_size")
    return (int(size[0]), int(size[1])) if size else None


def _first_sentence(error: Exception) -> str:
    return str(error).split(". ")[0].splitlines()[0][:200] if str(error) else ""


def load_module(path: str | Path, device: str | torch.device = "cpu") -> SegmentationModule:
    """The trained ``SegmentationModule`` stored at ``path``, in eval mode on ``device``."""
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint["hyper_parameters"])
    hparams["model"] = without_pretrained(hparams["model"])  # trained weights follow
    hparams["compile"] = False
    module = SegmentationModule(**hparams)
    missing, unexpected = module.load_state_dict(checkpoint["state_dict"], strict=False)
    # torchmetrics states are not saved; anything else missing means another architecture.
    missing = [k for k in missing if not k.startswith(("eval_metrics.", "eval_losses."))]
    if missing or unexpected:
        raise LightsegError(
            f"Checkpoint '{path}' does not match the model its hyperparameters describe "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]}). Was it edited by hand?"
        )
    return module.eval().to(device)


@dataclass
class Segmenter:
    """Class probabilities for images of any size from a trained module.

    ``image_size`` is the network input of ``whole`` mode and the window of ``slide`` mode
    (default: the training size stored in the checkpoint). ``stride`` is the window step
    (default: two thirds of the window). ``flip`` and ``scales`` are test-time augmentations:
    probabilities are averaged over every (scale, flip) combination.
    """

    module: SegmentationModule
    image_size: Sequence[int] | None = None
    mode: str = "whole"
    stride: Sequence[int] | None = None
    flip: bool = False
    scales: Sequence[float] = (1.0,)
    window_batch: int = 8
    device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise LightsegError(f"inference.mode='{self.mode}' is unknown: use whole or slide.")
        size = self.image_size or stored_image_size(self.module) or DEFAULT_IMAGE_SIZE
        self.image_size = (int(size[0]), int(size[1]))
        self.multiple = input_multiple(self.module.net)
        if any(side % self.multiple for side in self.image_size):
            raise LightsegError(
                f"inference.image_size={list(self.image_size)}: this network takes image sides "
                f"that are multiples of {self.multiple}."
            )
        if self.stride is None:
            self.stride = tuple(max(1, math.ceil(side * 2 / 3)) for side in self.image_size)
        self.stride = (int(self.stride[0]), int(self.stride[1]))
        if min(self.stride) < 1 or any(
            s > w for s, w in zip(self.stride, self.image_size, strict=True)
        ):
            raise LightsegError(
                f"inference.stride={list(self.stride)} must be between 1 and the window "
                f"{list(self.image_size)}, or windows would skip pixels."
            )
        self.scales = tuple(float(s) for s in self.scales) or (1.0,)
        if min(self.scales) <= 0:
            raise LightsegError(f"inference.scales={list(self.scales)} must all be > 0.")
        self.device = next(self.module.parameters()).device
        self.module.eval()

    @property
    def task(self):
        return self.module.task

    @property
    def augmented(self) -> bool:
        return self.flip or self.scales != (1.0,)

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """Pixels [H, W, C] (uint8 RGB, or as the source reads them) -> normalised float
        [1, C, H, W] on the model's device, by the module's own normalisation (the one its
        training batches went through, 16-bit images scaled by their range as there)."""
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
        return self.module.normalize(to_unit_range(pixels).to(self.device))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Probabilities float32 [C, H, W] for a uint8 RGB image [H, W, 3] (C = classes)."""
        return self.probabilities(self.normalize(image))[0].cpu().numpy()

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities [N, C, H, W] for normalised images [N, 3, H, W], averaged over TTA."""
        views = self.views(images)
        return sum(views.values()) / len(views)

    @torch.no_grad()
    def views(self, images: torch.Tensor) -> dict[tuple[float, bool], torch.Tensor]:
        """Probabilities [N, C, H, W] of each test-time augmentation, keyed (scale, flipped)."""
        flips = (False, True) if self.flip else (False,)
        views = {}
        for scale in self.scales:
            for flipped in flips:
                batch = images.flip(-1) if flipped else images
                probabilities = self.task.probabilities(self.logits(batch, scale))
                views[scale, flipped] = probabilities.flip(-1) if flipped else probabilities
        return views

    def with_and_without_tta(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities [C, H, W] without TTA, and averaged over TTA (None when it is off).

        The un-augmented view is part of most TTA settings; it is computed once for both.
        """
        images = self.normalize(image)
        views = self.views(images)
        plain = views.get((1.0, False))
        if plain is None:  # no scale is 1: the plain view is one more pass
            with torch.no_grad():
                plain = self.task.probabilities(self.logits(images))
        if not self.augmented:
            return plain[0].cpu().numpy(), None
        return plain[0].cpu().numpy(), (sum(views.values()) / len(views))[0].cpu().numpy()

    def logits(self, images: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Logits [N, out_channels, H, W] at the input's resolution, for one scale."""
        height, width = images.shape[-2:]
        if self.mode == "whole":
            size = tuple(nearest_multiple(side * scale, self.multiple) for side in self.image_size)
            logits = self._forward(_resize(images, size))
        else:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            logits = self._slide(_resize(images, size))
        return _resize(logits, (height, width))

    def _forward(self, images: torch.Tensor) -> torch.Tensor:
        logits, _ = logits_of(self.module(images))
        return logits.float()

    def _slide(self, images: torch.Tensor) -> torch.Tensor:
        """Average the logits of overlapping windows; images smaller than one are padded."""
        (window_h, window_w), (step_h, step_w) = self.image_size, self.stride
        height, width = images.shape[-2:]
        # Padding with 0 in normalised space is the mean colour, as training pads.
        padded = F.pad(images, (0, max(0, window_w - width), 0, max(0, window_h - height)))
        full_h, full_w = padded.shape[-2:]
        tops = _starts(full_h, window_h, step_h)
        lefts = _starts(full_w, window_w, step_w)
        boxes = [(top, left) for top in tops for left in lefts]
        channels = self.task.out_channels
        total = padded.new_zeros((padded.shape[0], channels, full_h, full_w))
        count = padded.new_zeros((1, 1, full_h, full_w))
        for image_index in range(padded.shape[0]):
            image = padded[image_index : image_index + 1]
            for first in range(0, len(boxes), self.window_batch):
                chunk = boxes[first : first + self.window_batch]
                crops = torch.cat(
                    [image[..., t : t + window_h, x : x + window_w] for t, x in chunk]
                )
                for (top, left), logits in zip(chunk, self._forward(crops), strict=True):
                    total[image_index, :, top : top + window_h, left : left + window_w] += logits
                    if image_index == 0:
                        count[..., top : top + window_h, left : left + window_w] += 1
        return (total / count)[..., :height, :width]


def _starts(full: int, window: int, step: int) -> list[int]:
    """Window offsets covering [0, full): every ``step``, plus one flush with the end."""
    starts = list(range(0, full - window + 1, step))
    if starts[-1] != full - window:
        starts.append(full - window)
    return starts


def _resize(tensor: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    return F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False)


def build_segmenter(module: SegmentationModule, inference: dict | None = None) -> Segmenter:
    """A :class:`Segmenter` from the ``inference`` config (configs/inference/default.yaml)."""
    options = dict(inference or {})
    mode = options.pop("mode", "auto")
    if mode in (None, "auto"):
        mode = (module.hparams.get("inference") or {}).get("mode", "whole")
    known = {"image_size", "stride", "flip", "scales", "window_batch"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise LightsegError(
            f"Unknown inference option(s) {unknown}; available: mode, {', '.join(sorted(known))} "
            "(configs/inference/default.yaml)."
        )
    options = {k: v for k, v in options.items() if v is not None}
    return Segmenter(module, mode=mode, **options)

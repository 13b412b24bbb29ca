"""Run a trained model on images of any size: whole images, sliding windows, TTA.

:class:`Segmenter` turns images into class probabilities at their own resolution: ``whole``
resizes to the training size, ``slide`` averages training-size windows at the image's own scale;
a mode that would show the model a scale it never saw is refused (``check_scale``). ``temperature``
(make calibrate's, by default) divides each view's logits. :class:`Ensemble` averages checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from itertools import product
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lightseg.checkpoints import load_module, model_input, read_temperature
from lightseg.data.transforms import to_unit_range
from lightseg.errors import LightsegError
from lightseg.models import SegmentationModule
from lightseg.models.network import logits_of, nearest_multiple
from lightseg.tools.uncertainty import mean_entropy

#: How far from the training scale a mode other than the validated one may show images.
SCALE_LIMIT = 1.5


@dataclass
class Views:
    """One image's probabilities [C, H, W] averaged over ``count`` predictions and ``entropy``,
    the mean of their own uncertainties (kept so that no prediction has to be held)."""

    probabilities: np.ndarray
    count: int
    entropy: float


@dataclass
class Segmenter:
    """Class probabilities for images of any size (configs/inference/default.yaml documents the
    options; ``gaussian`` window weights are nnU-Net's and MONAI's, sigma 1/8 of the window)."""

    module: SegmentationModule
    image_size: Sequence[int] | None = None
    mode: str = "whole"
    stride: Sequence[int] | None = None
    flip: bool = False
    scales: Sequence[float] = (1.0,)
    window_batch: int = 8
    check_scale: bool = True
    window_weights: str = "mean"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        for key, known in (("mode", ("whole", "slide")), ("window_weights", ("mean", "gaussian"))):
            if getattr(self, key) not in known:
                raise LightsegError(
                    f"inference.{key}='{getattr(self, key)}' is unknown: use {' or '.join(known)}."
                )
        self.passes = 0  # network passes over an image (all its windows in slide mode), for eval
        self.input, self.task = model_input(self.module), self.module.task
        size = self.image_size or self.input.image_size
        self.image_size = (int(size[0]), int(size[1]))
        if any(side % self.input.multiple for side in self.image_size):
            raise LightsegError(
                f"inference.image_size={list(self.image_size)}: this network takes image sides "
                f"that are multiples of {self.input.multiple}."
            )
        stride = self.stride or [max(1, math.ceil(side * 2 / 3)) for side in self.image_size]
        self.stride = (int(stride[0]), int(stride[1]))
        if not all(1 <= s <= w for s, w in zip(self.stride, self.image_size, strict=True)):
            raise LightsegError(
                f"inference.stride={list(self.stride)} must be between 1 and the window "
                f"{list(self.image_size)}, or windows would skip pixels."
            )
        given = self.temperature
        try:
            self.temperature = float(given)
        except (TypeError, ValueError):
            self.temperature = math.nan  # refused below, naming the key
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise LightsegError(
                f"inference.temperature={given} must be a number > 0, or auto (the one make "
                "calibrate stored beside the checkpoint, else 1)."
            )
        self.scales = tuple(float(s) for s in self.scales) or (1.0,)
        if min(self.scales) <= 0:
            raise LightsegError(f"inference.scales={list(self.scales)} must all be > 0.")
        self.device = next(self.module.parameters()).device
        self.module.eval()

    @property
    def augmented(self) -> bool:
        return self.flip or self.scales != (1.0,)

    def normalize(self, image: np.ndarray) -> torch.Tensor:
        """Pixels [H, W, C] -> float [1, C, H, W] on the model's device, as training scales them."""
        pixels = image[..., None] if image.ndim == 2 else image
        if pixels.shape[-1] != self.input.channels:
            raise LightsegError(
                f"An image with {pixels.shape[-1]} channel(s) was given to a model that takes "
                f"{self.input.channels} (the channels it was trained on)."
            )
        # np.require copies only arrays torch cannot share (read-only ones, as PIL gives)
        tensor = torch.from_numpy(np.require(pixels, requirements=("C", "W")))
        return self.module.normalize(to_unit_range(tensor.permute(2, 0, 1)[None]).to(self.device))

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """Probabilities float32 [C, H, W] for an image [H, W, channels], averaged over TTA."""
        views = self.views(self.normalize(image))
        return (sum(views.values()) / len(views))[0].cpu().numpy()

    def views(self, images: torch.Tensor) -> dict[tuple[float, bool], torch.Tensor]:
        """Probabilities [N, C, H, W] of each test-time augmentation, keyed (scale, flipped)."""
        self.refuse_unseen_scale(*images.shape[-2:])
        views = {}
        for scale, flipped in product(self.scales, (False, True) if self.flip else (False,)):
            batch = images.flip(-1) if flipped else images
            probabilities = self.probabilities(self.logits(batch, scale))
            views[scale, flipped] = probabilities.flip(-1) if flipped else probabilities
        return views

    def views_with_and_without_tta(self, image: np.ndarray) -> tuple[Views, Views | None]:
        """:class:`Views` without TTA and over TTA (None when off), sharing the plain view."""
        images = self.normalize(image)
        views = self.views(images)
        plain = views.get((1.0, False))
        if plain is None:  # no scale is 1: the plain view is one more pass
            plain = self.probabilities(self.logits(images))
        alone = Views(plain[0].cpu().numpy(), 1, mean_entropy(plain[0]))
        if not self.augmented:
            return alone, None
        entropy = sum(mean_entropy(view[0]) for view in views.values()) / len(views)
        averaged = (sum(views.values()) / len(views))[0].cpu().numpy()
        return alone, Views(averaged, len(views), entropy)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities [N, C, H, W] of logits, divided by the temperature first."""
        return self.task.probabilities(logits / self.temperature)

    def refuse_unseen_scale(self, height: int, width: int) -> None:
        """Refuse a mode other than the trained one if every scale would show the network
        images over ``SCALE_LIMIT`` times larger or smaller than training did."""
        trained = self.input.mode
        if not self.check_scale or trained not in ("whole", "slide") or trained == self.mode:
            return
        # per side, the seen scale at scale 1: whole resizes to image_size; slide keeps the
        # image's own scale where training resized it to the training size
        sides = zip((height, width), self.input.image_size, self.image_size, strict=True)
        base = [
            used / side if self.mode == "whole" else side / train for side, train, used in sides
        ]

        def off(ratio: float) -> float:
            return abs(math.log(ratio))

        ratio = min((max((s * b for b in base), key=off) for s in self.scales), key=off)
        if off(ratio) <= math.log(SCALE_LIMIT):
            return
        train_h, train_w = self.input.image_size
        if self.mode == "slide":
            what = (
                f"inference.mode=slide runs the network on this {width}x{height} image at its own "
                f"scale, but the model was trained on whole images resized to {train_w}x{train_h}"
            )
            fix = (
                f"inference.scales=[{1 / max(base, key=off):.2g}] to slide over images shrunk to "
                "about the training scale, "
            )
        else:
            what = (
                f"inference.mode=whole resizes this {width}x{height} image to "
                f"{self.image_size[1]}x{self.image_size[0]}, but the model was trained on windows "
                "at the images' own scale"
            )
            fix = ""
        raise LightsegError(
            f"{what} (its checkpoint's inference.mode={trained}): it would see everything "
            f"{max(ratio, 1 / ratio):.1f}x {'larger' if ratio > 1 else 'smaller'} than in "
            f"training, a scale it never learned. Use inference.mode=auto ({trained} for this "
            f"model), or {fix}or inference.check_scale=false to run inference.mode={self.mode} "
            "anyway."
        )

    @torch.no_grad()
    def logits(self, images: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Logits [N, out_channels, H, W] at the input's resolution, for one scale."""
        self.passes += 1
        height, width = images.shape[-2:]
        if self.mode == "whole":
            size = tuple(
                nearest_multiple(side * scale, self.input.multiple) for side in self.image_size
            )
            logits = logits_of(self.module(_resize(images, size))).float()
        else:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            logits = self._slide(_resize(images, size))
        return _resize(logits, (height, width))

    def _slide(self, images: torch.Tensor) -> torch.Tensor:
        """Weighted mean of overlapping windows' logits; a smaller image is padded with 0 (the
        mean colour once normalised), as training pads."""
        (window_h, window_w), (step_h, step_w) = self.image_size, self.stride
        height, width = images.shape[-2:]
        padded = F.pad(images, (0, max(0, window_w - width), 0, max(0, window_h - height)))
        full_h, full_w = padded.shape[-2:]
        boxes = list(product(_starts(full_h, window_h, step_h), _starts(full_w, window_w, step_w)))
        total = padded.new_zeros((padded.shape[0], self.task.out_channels, full_h, full_w))
        count = padded.new_zeros((1, 1, full_h, full_w))
        weights = padded.new_ones((1, window_h, window_w))
        if self.window_weights == "gaussian":
            weights = gaussian_weights(self.image_size).to(padded.device)[None]
        for top, left in boxes:
            count[..., top : top + window_h, left : left + window_w] += weights
        for image, image_total in zip(padded, total, strict=True):
            for first in range(0, len(boxes), self.window_batch):
                chunk = boxes[first : first + self.window_batch]
                crops = torch.stack(
                    [image[:, t : t + window_h, x : x + window_w] for t, x in chunk]
                )
                logits = logits_of(self.module(crops)).float()
                for (top, left), window in zip(chunk, logits, strict=True):
                    image_total[:, top : top + window_h, left : left + window_w] += window * weights
        return (total / count)[..., :height, :width]


def gaussian_weights(window: Sequence[int]) -> torch.Tensor:
    """[H, W] weights: a centred Gaussian, sigma 1/8 of each side, in (0, 1]."""
    axes = [
        torch.exp(-0.5 * ((torch.arange(side) - (side - 1) / 2) / (side / 8)) ** 2)
        for side in window
    ]
    return axes[0][:, None] * axes[1][None]


def _starts(full: int, window: int, step: int) -> list[int]:
    """Window offsets covering [0, full): every ``step``, plus one flush with the end."""
    starts = list(range(0, full - window + 1, step))
    return starts if starts[-1] == full - window else [*starts, full - window]


def _resize(tensor: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(tensor.shape[-2:]) == tuple(size):
        return tensor
    return F.interpolate(tensor, size=tuple(size), mode="bilinear", align_corners=False)


def build_segmenter(module: SegmentationModule, inference: dict | None = None) -> Segmenter:
    """A :class:`Segmenter` from the ``inference`` config; ``mode=auto``: the checkpoint's."""
    options = dict(inference or {})
    mode = options.pop("mode", "auto")
    if mode in (None, "auto"):
        mode = (module.hparams.get("inference") or {}).get("mode", "whole")
    known = {field.name for field in fields(Segmenter)} - {"module", "mode"}
    if unknown := sorted(set(options) - known):
        raise LightsegError(
            f"Unknown inference option(s) {unknown}; available: mode, {', '.join(sorted(known))} "
            "(configs/inference/default.yaml)."
        )
    options = {k: v for k, v in options.items() if v is not None}
    return Segmenter(module, mode=mode, **options)


class Ensemble:
    """Several checkpoints of one task as one model: each member's probabilities (after its own
    TTA) averaged. The first member stands for the task, the input and the inference settings."""

    def __init__(self, members: Sequence[Segmenter], paths: Sequence[str | Path]) -> None:
        self.members, self.paths = list(members), [str(path) for path in paths]
        first = self.members[0]
        self.module, self.input, self.task = first.module, first.input, first.task
        for path, member in zip(self.paths[1:], self.members[1:], strict=True):
            differ = [
                f"{what} {mine} vs {theirs}"
                for what, mine, theirs in (
                    ("classes", list(self.task.classes), list(member.task.classes)),
                    ("input channels", self.input.channels, member.input.channels),
                )
                if mine != theirs
            ]
            if differ:
                raise LightsegError(
                    f"Checkpoints '{self.paths[0]}' and '{path}' cannot be ensembled: their "
                    f"{' and '.join(differ)} differ. Ensemble checkpoints of one task (the same "
                    "classes and input channels), e.g. the folds of one run set."
                )

    def __getattr__(self, name: str):
        if name == "members":  # not set yet (a copy being made)
            raise AttributeError(name)
        return getattr(self.members[0], name)

    @property
    def augmented(self) -> bool:
        return any(member.augmented for member in self.members)

    @property
    def passes(self) -> int:
        return sum(member.passes for member in self.members)

    @property
    def temperature(self) -> list[float]:
        return [member.temperature for member in self.members]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return sum(member(image) for member in self.members) / len(self.members)

    def views_with_and_without_tta(self, image: np.ndarray) -> tuple[Views, Views | None]:
        """The members' :class:`Views` :func:`pooled`, each member's after its own TTA."""
        pairs = [member.views_with_and_without_tta(image) for member in self.members]
        plain = pooled([p for p, _ in pairs])
        return plain, pooled([a or p for p, a in pairs]) if self.augmented else None


def pooled(views: Sequence[Views]) -> Views:
    """Several :class:`Views` as one: probabilities averaged (each counts once), the entropy
    over all their predictions."""
    count = sum(view.count for view in views)
    return Views(
        sum(view.probabilities for view in views) / len(views),
        count,
        sum(view.entropy * view.count for view in views) / count,
    )


def checkpoint_paths(given) -> list[Path]:
    """``ckpt_path`` as files: one, several (comma-separated or a list), or every
    ``checkpoints/best.ckpt`` in a folder of runs (a run's own folder stays as given)."""
    single = given is None or isinstance(given, str | Path)
    names = str(given or "").split(",") if single else [str(name) for name in given]
    paths = []
    for path in (Path(name.strip()) for name in names if name.strip()):
        runs = path.is_dir() and not (path / "checkpoints").is_dir()
        paths += (sorted(path.rglob("checkpoints/best.ckpt")) if runs else []) or [path]
    if not paths:
        raise LightsegError(
            "ckpt_path is empty: give a checkpoint file, several (a.ckpt,b.ckpt: an ensemble) "
            "or a folder of runs."
        )
    return paths


def load_segmenter(
    given, device: str | torch.device, inference: dict | None = None
) -> Segmenter | Ensemble:
    """The :class:`Segmenter` of ``ckpt_path``, or the :class:`Ensemble` of several."""
    paths, options = checkpoint_paths(given), dict(inference or {})
    chosen = options.pop("temperature", "auto")
    members = [
        build_segmenter(
            load_module(path, device),
            {
                **options,
                "temperature": read_temperature(path) if chosen in (None, "auto") else chosen,
            },
        )
        for path in paths
    ]
    return members[0] if len(members) == 1 else Ensemble(members, paths)

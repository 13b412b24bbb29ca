"""Run a trained model on images of any size: whole images, sliding windows, TTA.

:class:`Segmenter` turns images (pixels as training read them) into class probabilities at their
own resolution: ``whole`` resizes to the training size and the logits back; ``slide`` averages
the logits of overlapping training-size windows over the image at its own scale; both may
average test-time augmentations. A mode other than the one the model was validated with can show
it images at a scale it never saw (``slide`` on a model trained on 765x570 images resized to
256x256 sees every lesion three times larger): refused with the fix unless ``check_scale=False``.
:class:`Ensemble` averages the probabilities of several checkpoints of one task.

``temperature`` (temperature scaling, Guo et al. 2017) divides the logits before the
sigmoid/softmax: the classes stay, the probabilities soften (T > 1) or sharpen. By default
(``inference.temperature=auto``) it is the one ``make calibrate`` stored beside the checkpoint
(:func:`lightseg.checkpoints.read_temperature`), 1 without one; an ensemble's members each
use their own. It applies to each view before TTA averages them, as ``make calibrate`` fits it.
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
    """One image's probabilities [C, H, W] averaged over ``count`` predictions (TTA views,
    ensemble members), and ``entropy``: the mean over those predictions of each one's own
    uncertainty (:func:`~lightseg.tools.uncertainty.mean_entropy`). The uncertainty of the
    average minus ``entropy`` is how much the predictions disagree (the mutual information),
    kept as a number so that no prediction has to be held."""

    probabilities: np.ndarray
    count: int
    entropy: float


@dataclass
class Segmenter:
    """Class probabilities for images of any size. ``image_size``: the input of ``whole`` mode
    and the window of ``slide`` (default: the training size); ``stride``: the window step
    (default: two thirds of it); ``flip``, ``scales``: test-time augmentations, averaged over;
    ``window_weights``: how overlapping windows blend, ``mean`` or ``gaussian`` (nnU-Net's and
    MONAI's importance weighting, sigma 1/8 of the window: window borders, which see the least
    context, count less); ``temperature``: what the logits are divided by (see the module
    docs)."""

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
        if self.mode not in ("whole", "slide"):
            raise LightsegError(f"inference.mode='{self.mode}' is unknown: use whole or slide.")
        if self.window_weights not in ("mean", "gaussian"):
            raise LightsegError(
                f"inference.window_weights='{self.window_weights}' is unknown: use mean or "
                "gaussian."
            )
        self.passes = 0  # network passes over an image (all its windows in slide mode), for eval
        self.input, self.task = model_input(self.module), self.module.task
        size = self.image_size or self.input.image_size
        self.image_size = (int(size[0]), int(size[1]))
        self.multiple = self.input.multiple
        if any(side % self.multiple for side in self.image_size):
            raise LightsegError(
                f"inference.image_size={list(self.image_size)}: this network takes image sides "
                f"that are multiples of {self.multiple}."
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

    @torch.no_grad()
    def views(self, images: torch.Tensor) -> dict[tuple[float, bool], torch.Tensor]:
        """Probabilities [N, C, H, W] of each test-time augmentation, keyed (scale, flipped)."""
        self.refuse_unseen_scale(*images.shape[-2:])
        views = {}
        for scale, flipped in product(self.scales, (False, True) if self.flip else (False,)):
            batch = images.flip(-1) if flipped else images
            probabilities = self.probabilities(self.logits(batch, scale))
            views[scale, flipped] = probabilities.flip(-1) if flipped else probabilities
        return views

    def with_and_without_tta(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities [C, H, W] without TTA and averaged over TTA (None when off)."""
        plain, augmented = self.views_with_and_without_tta(image)
        return plain.probabilities, augmented.probabilities if augmented else None

    def views_with_and_without_tta(self, image: np.ndarray) -> tuple[Views, Views | None]:
        """:class:`Views` without TTA and over TTA (None when off); the plain view, part of
        most TTA settings, is computed once for both."""
        images = self.normalize(image)
        views = self.views(images)
        plain = views.get((1.0, False))
        if plain is None:  # no scale is 1: the plain view is one more pass
            with torch.no_grad():
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

    def seen_scale(self, height: int, width: int, scale: float = 1.0) -> float:
        """How many times larger (> 1) or smaller the network sees an image of this size than
        training showed it, on the side where the two differ most."""
        ratios = []
        sides = zip((height, width), self.input.image_size, self.image_size, strict=True)
        for side, trained, used in sides:
            at_inference = used * scale / side if self.mode == "whole" else scale
            ratios.append(at_inference / (trained / side if self.input.mode == "whole" else 1.0))
        return max(ratios, key=lambda ratio: abs(math.log(ratio)))

    def refuse_unseen_scale(self, height: int, width: int) -> None:
        """The error of :attr:`check_scale` (see the module docs)."""
        trained = self.input.mode
        if not self.check_scale or trained not in ("whole", "slide") or trained == self.mode:
            return
        ratio = min(
            (self.seen_scale(height, width, s) for s in self.scales), key=lambda r: abs(math.log(r))
        )
        if 1 / SCALE_LIMIT <= ratio <= SCALE_LIMIT:
            return
        train_h, train_w = self.input.image_size
        how = "larger" if ratio > 1 else "smaller"
        if self.mode == "slide":
            what = (
                f"inference.mode=slide runs the network on this {width}x{height} image at its own "
                f"scale, but the model was trained on whole images resized to {train_w}x{train_h}"
            )
            fix = (
                f"inference.scales=[{1 / self.seen_scale(height, width):.2g}] to slide over "
                "images shrunk to about the training scale, "
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
            f"{max(ratio, 1 / ratio):.1f}x {how} than in training, a scale it never learned. Use "
            f"inference.mode=auto ({trained} for this model), or {fix}or "
            f"inference.check_scale=false to run inference.mode={self.mode} anyway."
        )

    def logits(self, images: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        """Logits [N, out_channels, H, W] at the input's resolution, for one scale."""
        self.passes += 1
        height, width = images.shape[-2:]
        if self.mode == "whole":
            size = tuple(nearest_multiple(side * scale, self.multiple) for side in self.image_size)
            logits = logits_of(self.module(_resize(images, size))).float()
        else:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            logits = self._slide(_resize(images, size))
        return _resize(logits, (height, width))

    def _slide(self, images: torch.Tensor) -> torch.Tensor:
        """Average (weighted) the logits of overlapping windows; images smaller than one are
        padded."""
        (window_h, window_w), (step_h, step_w) = self.image_size, self.stride
        height, width = images.shape[-2:]
        # Padding with 0 in normalised space is the mean colour, as training pads.
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
    """[H, W] weights of a window's pixels: a Gaussian centred on it, sigma 1/8 of each side
    (nnU-Net, MONAI), at most 1; never 0, so every pixel is covered."""
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
    """A :class:`Segmenter` from the ``inference`` config (configs/inference/default.yaml)."""
    options = dict(inference or {})
    mode = options.pop("mode", "auto")
    if mode in (None, "auto"):
        mode = (module.hparams.get("inference") or {}).get("mode", "whole")
    known = {field.name for field in fields(Segmenter)} - {"module", "mode"}
    unknown = sorted(set(options) - known)
    if unknown:
        raise LightsegError(
            f"Unknown inference option(s) {unknown}; available: mode, {', '.join(sorted(known))} "
            "(configs/inference/default.yaml)."
        )
    options = {k: v for k, v in options.items() if v is not None}
    return Segmenter(module, mode=mode, **options)


class Ensemble:
    """Several checkpoints of one task as one model: each member's probabilities (after its own
    TTA) averaged at the image's resolution. The first member stands for the task, the input and
    the metrics; the interface is :class:`Segmenter`'s that eval and predict use."""

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
        """Inference settings (mode, flip, ...) as the first member has them."""
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
        """Each member's own."""
        return [member.temperature for member in self.members]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        return sum(member(image) for member in self.members) / len(self.members)

    def with_and_without_tta(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        plain, augmented = self.views_with_and_without_tta(image)
        return plain.probabilities, augmented.probabilities if augmented else None

    def views_with_and_without_tta(self, image: np.ndarray) -> tuple[Views, Views | None]:
        """The members' :class:`Views` pooled: probabilities averaged over members (each after
        its own TTA), the entropy over every member's every view."""
        pairs = [member.views_with_and_without_tta(image) for member in self.members]
        plain = pooled([p for p, _ in pairs])
        return plain, pooled([a or p for p, a in pairs]) if self.augmented else None


def pooled(views: Sequence[Views]) -> Views:
    """Several predictions' :class:`Views` as one: probabilities averaged (each counts once),
    the entropy averaged over all their predictions."""
    count = sum(view.count for view in views)
    return Views(
        sum(view.probabilities for view in views) / len(views),
        count,
        sum(view.entropy * view.count for view in views) / count,
    )


def checkpoint_paths(given) -> list[Path]:
    """``ckpt_path`` as files: one, several (comma-separated or a list), or a folder of runs
    (every ``checkpoints/best.ckpt`` below it; a run's own folder is refused as before)."""
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
    """The :class:`Segmenter` of ``ckpt_path``, or the :class:`Ensemble` of several; each with
    its checkpoint's stored temperature unless ``inference.temperature`` gives a number."""
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

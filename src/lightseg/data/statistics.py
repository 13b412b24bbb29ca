"""What the training split looks like in numbers: per-channel mean/std and class frequencies.

Computed on request (``auto`` values) from the training pairs as read, in pipeline units;
cached as JSON in ``<data.cache.dir>/statistics``, keyed on the samples' fingerprint.
"""

from __future__ import annotations

import copy
import json
import logging
import statistics as stats
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from lightseg.config import FROM_TRAINING_SPLIT
from lightseg.data.source import Sample, SegmentationSource, fingerprint, read_pair
from lightseg.data.transforms import pixel_scale
from lightseg.errors import LightsegError, written_whole

log = logging.getLogger(__name__)

VERSION = 1  # bump when what is measured changes, so old cache files are not used
#: ``class_weights`` values: ``auto`` and ``median`` (median frequency), ``inverse``.
WEIGHTINGS = FROM_TRAINING_SPLIT["class_weights"]


@dataclass(frozen=True)
class SplitStatistics:
    """Sums over one split; every per-class list has one entry per class, background first."""

    classes: tuple[str, ...]
    images: int
    mean: tuple[float, ...]  # per channel, in pipeline units
    std: tuple[float, ...]
    class_pixels: tuple[int, ...]  # labelled pixels of each class
    class_images: tuple[int, ...]  # images that contain the class
    pixels_with_class: tuple[int, ...]  # labelled pixels of the images that contain the class

    @property
    def shares(self) -> list[float]:
        """Each class's share of the labelled pixels."""
        total = sum(self.class_pixels)
        return [count / total if total else 0.0 for count in self.class_pixels]

    def class_weights(self, method: str) -> list[float]:
        """Per-class loss weights: ``median`` frequency balancing (Eigen & Fergus, ICCV 2015:
        median(freq) / freq(c), freq(c) = pixels of c / pixels of the images containing c) or
        ``inverse`` frequency (weighted mean 1); a class never in the split (no target) gets 1.
        """
        if method not in WEIGHTINGS:
            raise LightsegError(
                f"class_weights={method!r} is not a weighting: use {', '.join(WEIGHTINGS)} "
                "(auto = median frequency), or a list of one weight per class."
            )
        present = [c for c, count in enumerate(self.class_pixels) if count]
        absent = [self.classes[c] for c in range(len(self.classes)) if c not in present]
        if absent:
            log.warning("No training pixel of class(es) %s: their class weight is 1.", absent)
        if method in ("auto", "median"):
            freq = {c: self.class_pixels[c] / self.pixels_with_class[c] for c in present}
            middle = stats.median(freq.values())
            weights = {c: middle / freq[c] for c in present}
        else:
            total = sum(self.class_pixels)
            weights = {c: total / (len(present) * self.class_pixels[c]) for c in present}
        return [round(weights.get(c, 1.0), 6) for c in range(len(self.classes))]

    def pos_weight(self) -> float:
        """Binary cross-entropy's weight of the foreground: background / foreground pixels."""
        background, foreground = self.class_pixels[0], sum(self.class_pixels[1:])
        if not foreground:
            raise LightsegError(
                "pos_weight=auto: the training split has no foreground pixel, so there is "
                "nothing to weight. Check the masks (make data DATASET=...)."
            )
        return round(background / foreground, 6)


class Accumulator:
    """Running sums of pixel values and class counts, one (image, mask) pair at a time."""

    def __init__(self, classes: Sequence[str]) -> None:
        self.classes = tuple(classes)
        self.images, self.pixels, self.sums, self.squares = 0, 0, 0.0, 0.0  # sums: per channel
        counts = np.zeros((3, len(self.classes)), np.int64)
        self.class_pixels, self.class_images, self.pixels_with_class = counts

    def add(self, image: np.ndarray, mask: np.ndarray) -> None:
        values = image.reshape(-1, image.shape[-1] if image.ndim == 3 else 1)
        values = values.astype(np.float64) / pixel_scale(image.dtype)
        self.sums += values.sum(0)
        self.squares += np.square(values).sum(0)
        self.pixels += values.shape[0]
        counts = np.bincount(mask.ravel(), minlength=256)[: len(self.classes)]
        labelled = int(counts.sum())
        self.class_pixels += counts
        self.class_images += counts > 0
        self.pixels_with_class += np.where(counts > 0, labelled, 0)
        self.images += 1

    def result(self) -> SplitStatistics:
        if not self.images:
            raise LightsegError("Cannot compute statistics of an empty training split.")
        mean = self.sums / self.pixels
        std = np.sqrt(np.maximum(self.squares / self.pixels - mean**2, 0.0))
        return SplitStatistics(
            classes=self.classes,
            images=self.images,
            mean=tuple(round(float(v), 6) for v in mean),
            std=tuple(round(max(float(v), 1e-6), 6) for v in std),
            class_pixels=tuple(int(v) for v in self.class_pixels),
            class_images=tuple(int(v) for v in self.class_images),
            pixels_with_class=tuple(int(v) for v in self.pixels_with_class),
        )


def measure(source: SegmentationSource, samples: Sequence[Sample]) -> SplitStatistics:
    """Statistics of ``samples`` as ``source`` reads them."""
    accumulator = Accumulator(source.classes)
    for sample in samples:  # size-checked, as training reads them
        accumulator.add(*read_pair(source, sample))
    return accumulator.result()


def training_statistics(
    source: SegmentationSource,
    samples: Sequence[Sample],
    folder: Path,
    measured: SplitStatistics | None = None,
) -> SplitStatistics:
    """:func:`measure` of ``samples``, cached in ``folder`` (``measured``: the caller's own)."""
    path = Path(folder) / f"statistics-{fingerprint(source, samples, version=VERSION)[:20]}.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text()).items()
            return SplitStatistics(**{k: tuple(v) if isinstance(v, list) else v for k, v in stored})
        except (ValueError, TypeError):
            log.warning("Ignoring unreadable statistics cache %s", path)
    if measured is None:
        log.info("Measuring the %d training images (once; cached in %s)", len(samples), folder)
        measured = measure(source, samples)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(path) as temp:
            temp.write_text(json.dumps(asdict(measured), indent=1))
    except OSError as error:
        log.warning("Could not cache the statistics in %s (%s): they are recomputed.", path, error)
    return measured


def resolve_auto(cfg: DictConfig, datamodule) -> DictConfig:
    """A copy of ``cfg`` whose ``auto`` mean/std, class weights and pos weights are numbers
    from the training split, so the saved config holds the numbers that were used."""
    datamodule.locate()  # measures `auto` mean/std
    resolved = copy.deepcopy(cfg)
    resolved.data.mean, resolved.data.std = list(datamodule.mean), list(datamodule.std)
    for name, entry in (resolved.get("loss") or {}).items():
        term = (entry or {}).get("term") or {}
        weighting = term.get("class_weights")
        if isinstance(weighting, str) and weighting in WEIGHTINGS:
            term.class_weights = datamodule.statistics().class_weights(weighting)
            log.info(f"loss.{name}.term.class_weights={list(term.class_weights)} ({weighting})")
        if term.get("pos_weight") == "auto":
            term.pos_weight = datamodule.statistics().pos_weight()
            log.info("loss.%s.term.pos_weight=%s (background/foreground)", name, term.pos_weight)
    return resolved

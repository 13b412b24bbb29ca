"""The dataset contract: a :class:`SegmentationSource` subclass plus one YAML naming it
(``data.source._target_``) with its settings. lightseg calls, in this order:

``prepare()``  optional: download or convert, in every process before ``find()``, under a file
               lock of the dataset folder. Write into a scratch folder renamed when complete;
               derived files go under :func:`cache_home`.
``find()``     the :class:`Sample` list; raise ``self.missing(path)`` when the data is absent.
``split()``    optional: by default the split lists (:meth:`listed`) or :func:`stratified_split`
               by ``Sample.stratum``, each ``Sample.group`` in one split; :func:`official_split`
               for official lists.
``read(s)``    ``(image [H, W, C], mask uint8 [H, W])``: class indices, 255 = ignore. Images are
               uint8, uint16 or float32 (each scaled by its range) with ``in_channels`` channels.

A source declares ``classes`` (background first; two make a binary task), ``in_channels`` and
``how_to_get`` (what ``missing()`` tells a user). Caches are keyed on its constructor's
arguments (:meth:`~SegmentationSource.settings`), its class and each sample file's path, size
and mtime, so a changed setting never serves a stale cache.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lightseg.errors import LightsegError
from lightseg.task import IGNORE_INDEX

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def cache_home() -> Path:
    """``paths.cache_dir``: ``$LIGHTSEG_CACHE_DIR`` or ``~/.cache/lightseg``, shared by runs."""
    return Path(os.environ.get("LIGHTSEG_CACHE_DIR") or "~/.cache/lightseg").expanduser()


@dataclass(frozen=True)
class Sample:
    """One (image, mask) pair on disk: ``stratum`` groups samples for stratified splits,
    ``subset`` names the official list it comes from (VOC's ``val``), ``extras`` are more
    batch fields (a label, a weight) that a fork's training step reads as ``batch[<name>]``, and
    samples of one ``group`` (a video, a patient: ``data.split.group_by``) share a split."""

    id: str
    image: Path
    mask: Path | None = None
    stratum: str | None = None
    subset: str | None = None
    extras: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    group: str | None = field(default=None, compare=False)


Splits = dict[str, list[Sample]]  # the samples of each of SPLITS


class SegmentationSource:
    """A dataset in its official on-disk layout under ``root`` (see the module docs)."""

    classes: tuple[str, ...] = ()  # background first; two make a binary task
    in_channels: int = 3  # of every image ``read`` returns; the network takes as many
    how_to_get: str = ""  # where to get the data, for ``missing()``

    def __new__(cls, *args: Any, **kwargs: Any) -> SegmentationSource:
        source = super().__new__(cls)
        try:  # unpickling passes no arguments: the recorded settings come back with __dict__
            bound = inspect.signature(cls.__init__).bind(source, *args, **kwargs)
        except TypeError:
            return source  # (or a wrong call, which __init__ reports)
        bound.apply_defaults()
        source._settings = dict(list(bound.arguments.items())[1:])  # without self
        return source

    def __init__(self, root: str | Path, split_lists: str | Path | None = None) -> None:
        self.root, self.split_lists = Path(root), split_lists

    def settings(self) -> dict[str, Any]:
        """The constructor's arguments, defaults filled in: what keys the caches. Override it
        when reading depends on more (a code version)."""
        return dict(getattr(self, "_settings", {}))

    def prepare(self) -> None:
        """Download, generate or convert files; see the module docs for when it runs."""

    def find(self) -> list[Sample]:
        raise NotImplementedError

    def columns(self) -> Mapping[str, Mapping[str, str]]:
        """Per sample id, text columns (a CSV's) that ``data.split.group_by`` may name."""
        return {}

    def listed(self, samples: list[Sample]) -> list[Sample]:
        """``samples`` with ``subset`` set from ``<root>/<split_lists>/{train,val,test}.txt`` (a
        published split or your own; the folder may be absolute), unchanged without lists."""
        if not self.split_lists:
            return samples
        folder = self.root / self.split_lists
        if not folder.is_dir():
            raise LightsegError(
                f"data.source.split_lists='{self.split_lists}': '{folder}' is not a folder. "
                "Point it at a folder holding train.txt and test.txt (and optionally val.txt), "
                "one sample id per line, or set data.source.split_lists=null for a generated split."
            )
        ids, subsets = {s.id for s in samples}, {}
        for name in SPLITS:
            path, unknown = folder / f"{name}.txt", []
            lines = path.read_text().splitlines() if path.is_file() else []
            for line, text in enumerate(lines, start=1):
                entry = self.list_entry(text)
                if entry is None:
                    continue
                if entry not in ids:
                    unknown.append(f"line {line}: '{text.strip()}'")
                elif subsets.setdefault(entry, name) != name:
                    raise LightsegError(
                        f"'{entry}' is listed in both {subsets[entry]}.txt and {name}.txt under "
                        f"'{folder}': a sample belongs to one split."
                    )
            if unknown:
                raise LightsegError(
                    f"'{path}' names samples that were not found: {listing(unknown)}. Entries are "
                    f"the sample ids {type(self).__name__} finds under '{self.root}' (e.g. "
                    f"'{samples[0].id}'; an image extension is dropped): fix or remove those "
                    "lines, or check that data.source.root is the data set the lists were made for."
                )
        missing = [name for name in ("train", "test") if name not in subsets.values()]
        if missing:
            raise LightsegError(
                f"'{folder}' needs {' and '.join(f'{m}.txt' for m in missing)} (val.txt is "
                "optional: without it validation is taken from train.txt). Add the list(s), "
                "or set data.source.split_lists=null for a generated split."
            )
        unlisted = len(samples) - len(subsets)
        if unlisted:
            log.warning("%d sample(s) are in none of the lists in %s: not used.", unlisted, folder)
        return [replace(s, subset=subsets.get(s.id)) for s in samples]

    def list_entry(self, text: str) -> str | None:
        """A split list's line as a sample id (an image extension dropped), None if blank or #."""
        entry = text.strip()
        if not entry or entry.startswith("#"):
            return None
        path = Path(entry)
        return (path.with_suffix("") if path.suffix.lower() in IMAGE_SUFFIXES else path).as_posix()

    def split(self, samples: list[Sample], fractions: Mapping[str, float], seed: int) -> Splits:
        """The split lists (without val.txt, val is cut from train) or the generated split,
        stratified by ``Sample.stratum``; override for official splits."""
        if not any(s.subset for s in samples):
            return stratified_split(samples, fractions, seed)
        groups = {name: [s for s in samples if s.subset == name] for name in SPLITS}
        if not groups["val"]:
            inner = stratified_split(groups["train"], {"val": fractions.get("val", 0.0)}, seed)
            groups["train"], groups["val"] = inner["train"], inner["val"]
        return groups

    def fold_split(
        self, samples: list[Sample], folds: int, fold: int, val: float, seed: int
    ) -> Splits:
        """:func:`kfold_split`; refused for official subsets, which a re-split would ignore."""
        fixed = sorted({s.subset for s in samples if s.subset})
        if fixed:
            raise LightsegError(
                f"{type(self).__name__} comes with fixed splits ({', '.join(fixed)}), which "
                "data.split.folds would ignore. Remove data.split.folds for the fixed splits, or "
                "remove the split lists (data.source.split_lists, a folder's splits/*.txt or its "
                "CSV split column) to cross-validate."
            )
        return kfold_split(samples, folds, fold, val, seed)

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """``(image [H, W, in_channels], mask uint8 [H, W] of class indices, 255 = ignore)``."""
        raise NotImplementedError

    def missing(self, looked_for: Path | str) -> LightsegError:
        """The error for a dataset that is not where the config says."""
        return LightsegError(
            f"{type(self).__name__} not found: looked for '{looked_for}' under root "
            f"'{self.root}'. {self.how_to_get} Set the data folder with LIGHTSEG_DATA_DIR or "
            "paths.data_dir=... . To try lightseg without downloading anything, run `make train` "
            "(the built-in demo data)."
        )


def file_stamp(path: Path | None) -> list | None:
    """``[absolute path, size, mtime_ns]``; a missing file is stamped too (its read errs)."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return [os.path.abspath(path), None]
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def fingerprint(source: SegmentationSource, samples: Sequence[Sample], **extra: Any) -> str:
    """SHA-1 of what caches of ``samples`` depend on: the source, its settings, each sample's
    files, and ``extra`` (the cache's own format version, working size)."""
    described = {
        "source": f"{type(source).__module__}.{type(source).__qualname__}",
        "classes": list(source.classes),
        "in_channels": source.in_channels,
        "settings": source.settings(),
        "samples": [
            [s.id, file_stamp(s.image), file_stamp(s.mask)]
            for s in sorted(samples, key=lambda s: s.id)
        ],
        **extra,
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()


def read_pair(source: SegmentationSource, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """``source.read(sample)``, checked: image and mask must have the same size."""
    image, mask = source.read(sample)
    if image.shape[:2] != mask.shape[:2]:
        raise LightsegError(
            f"Image and mask of sample '{sample.id}' differ in size: the mask '{sample.mask}' is "
            f"{mask.shape[1]}x{mask.shape[0]} pixels but its image '{sample.image}' is "
            f"{image.shape[1]}x{image.shape[0]}. A mask must match its image pixel for pixel: "
            "export the mask again at the image's size, or re-extract both files from the "
            "dataset's archive."
        )
    return image, mask


def open_image(path: Path) -> Image.Image:
    """Open an image file, turning a missing or corrupt file into an error that names it."""
    try:
        image = Image.open(path)
        image.load()
    except OSError as error:  # missing, unreadable or not an image (UnidentifiedImageError)
        raise LightsegError(
            f"Cannot read image file '{path}' ({error}). Re-extract this file from the "
            "dataset's official archive, or remove the sample from the dataset folder."
        ) from None
    return image


def read_rgb(path: Path) -> np.ndarray:
    """uint8 ``[H, W, 3]``: grayscale, palette and RGBA files converted to RGB."""
    return np.asarray(open_image(path).convert("RGB"))


def read_label_png(path: Path, num_classes: int) -> np.ndarray:
    """Class indices of a palette (its colours are only for display) or grayscale PNG."""
    image = open_image(path)
    if image.mode not in ("P", "L"):
        raise LightsegError(
            f"Label mask '{path}' is a {image.mode} image, but must hold class indices (a "
            "palette or grayscale PNG). Re-extract it from the official archive; do not save "
            "masks through tools that convert them to RGB."
        )
    return check_labels(np.asarray(image), num_classes, path)


REEXTRACT = "The file is damaged or from another dataset: re-extract it from the official archive."


def check_labels(mask: np.ndarray, num_classes: int, path: Path, fix: str = REEXTRACT):
    """``mask`` if every value is a class index or 255, else an error saying ``fix``."""
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise LightsegError(
            f"Mask '{path}' holds the value(s) {bad.tolist()[:10]}, but only class indices "
            f"0..{num_classes - 1} and {IGNORE_INDEX} (ignore) are allowed. {fix}"
        )
    return mask


#: 0/255 masks: foreground >= BINARY_THRESHOLD. More than MAX_UNCLEAR of the pixels strictly
#: between UNCLEAR_LOW and UNCLEAR_HIGH means the mask is not binary (a photo, a soft matte, a
#: multi-class mask), while JPEG noise and anti-aliased edges pass.
BINARY_THRESHOLD, UNCLEAR_LOW, UNCLEAR_HIGH, MAX_UNCLEAR = 128, 32, 223, 0.05


def threshold_binary(values: np.ndarray, path: Path, what: str, hint: str) -> np.ndarray:
    """A 0/255 mask as 0/1 uint8, or an error naming ``what`` and ``hint`` if not binary."""
    unclear = float(((values > UNCLEAR_LOW) & (values < UNCLEAR_HIGH)).mean())
    if unclear > MAX_UNCLEAR:
        raise LightsegError(
            f"{what} '{path}' is not a binary mask: {unclear:.0%} of its pixels have values "
            f"between {UNCLEAR_LOW} and {UNCLEAR_HIGH} (values seen: {np.unique(values)[:8]}...). "
            f"{hint}"
        )
    return (values >= BINARY_THRESHOLD).astype(np.uint8)


def at_least(value, minimum: int, key: str) -> int:
    """``value`` as an int >= ``minimum``, or an error naming the config key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LightsegError(f"{key}={value!r} must be a whole number >= {minimum}.")
    return int(value)


def by_stratum(samples: Sequence[Sample], seed: int) -> list[list[list[Sample]]]:
    """Each stratum's units (strata by name), shuffled with ``seed``: a unit is a
    ``Sample.group``'s members (stratum: its first member's) or one ungrouped sample."""
    units: dict[tuple, list[Sample]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: s.id):
        units[("group", sample.group) if sample.group else ("id", sample.id)].append(sample)
    strata: dict[str | None, list[list[Sample]]] = defaultdict(list)
    for members in units.values():  # in the order of their first ids
        strata[members[0].stratum].append(members)
    rng = np.random.default_rng(seed)
    ordered = sorted(strata.items(), key=lambda item: str(item[0]))
    return [[members[i] for i in rng.permutation(len(members))] for _, members in ordered]


def stratified_split(
    samples: Sequence[Sample], fractions: Mapping[str, float], seed: int
) -> Splits:
    """Shuffle each stratum with ``seed`` and cut val/test fractions off, the rest training;
    strata merge by evenly spaced positions, so sizes are exact (within a group's size when
    samples are grouped) and any prefix keeps the mix."""
    val, test = float(fractions.get("val", 0.0)), float(fractions.get("test", 0.0))
    if val < 0 or test < 0 or val + test >= 1:
        raise LightsegError(
            f"data.split fractions val={val} and test={test} must be >= 0 and sum to less than 1."
        )
    keyed = [
        ((rank + 0.5) / len(units), str(unit[0].stratum), unit)
        for units in by_stratum(samples, seed)
        for rank, unit in enumerate(units)
    ]
    wanted = {"val": round(val * len(samples)), "test": round(test * len(samples))}
    groups: Splits = {name: [] for name in SPLITS}
    for *_, unit in sorted(keyed, key=lambda item: item[:2]):  # a whole unit per split
        name = next((n for n in ("val", "test") if len(groups[n]) < wanted[n]), "train")
        groups[name] += unit
    return {name: sorted(groups[name], key=lambda s: s.id) for name in SPLITS}


def check_fold(folds, fold) -> int:
    """``data.split.folds`` as an int >= 2, checked to have a fold number ``data.split.fold``."""
    folds = at_least(folds, 2, "data.split.folds")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise LightsegError(
            f"data.split.fold={fold!r} must be one of 0..{folds - 1} (data.split.folds={folds})."
        )
    return folds


def kfold_split(samples: Sequence[Sample], folds: int, fold: int, val: float, seed: int) -> Splits:
    """Test = fold ``fold`` of ``folds`` dealt from the shuffled strata, each unit (a group or
    one sample) to the smallest fold (round-robin for single samples: even strata, sizes within
    one, each sample tested once over all folds); val = ``val`` of the rest."""
    folds = check_fold(folds, fold)
    if len(samples) < folds:
        raise LightsegError(
            f"data.split.folds={folds} needs at least {folds} samples; the dataset has "
            f"{len(samples)}."
        )
    dealt: list[list[Sample]] = [[] for _ in range(folds)]
    for unit in (unit for units in by_stratum(samples, seed) for unit in units):
        min(dealt, key=len).extend(unit)  # the first of the smallest folds
    rest = [s for number, members in enumerate(dealt) if number != fold for s in members]
    n_val = round(float(val) * len(samples))
    if not 0 <= n_val < len(rest):
        raise LightsegError(
            f"data.split.val={val} with data.split.folds={folds} leaves no training data: the "
            f"validation set is taken from the {len(rest)} samples outside the test fold. Use a "
            "smaller data.split.val."
        )
    inner = stratified_split(rest, {"val": n_val / len(rest)}, seed)
    tested = sorted(dealt[fold], key=lambda s: s.id)
    return {"train": inner["train"], "val": inner["val"], "test": tested}


def listing(items: Sequence, shown: int = 10, separator: str = ", ") -> str:
    """``items`` joined, at most ``shown`` of them, then "... and N more"."""
    more = f" ... and {len(items) - shown} more" if len(items) > shown else ""
    return separator.join(str(i) for i in items[:shown]) + more


def subset_map(splits: Mapping[str, str]) -> dict[str, str]:
    """``data.source.splits``, checked to map each split to a subset (two may share one)."""
    unmapped = [name for name in SPLITS if not splits.get(name)]
    if unmapped:
        raise LightsegError(
            f"data.source.splits={dict(splits)} names no subset for {unmapped}: map each of "
            f"{list(SPLITS)} to one of the dataset's official subsets."
        )
    return {name: str(splits[name]) for name in SPLITS}


def official_split(samples: Sequence[Sample], subsets: Mapping[str, str]) -> Splits:
    """Each split takes the samples of the subset ``subsets`` maps it to (``Sample.subset``)."""
    return {
        name: sorted((s for s in samples if s.subset == subsets[name]), key=lambda s: s.id)
        for name in SPLITS
    }

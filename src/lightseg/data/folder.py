"""Your own images and masks (``data=folder``, README: Train on your own data): ``images/`` and
``masks/`` paired by stem through ``mask_pattern`` (subfolders kept in the ids) or a CSV of pairs,
and optional ``splits/*.txt``. :mod:`lightseg.data.pixels` reads and checks the files.
"""

from __future__ import annotations

import csv as csvlib
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lightseg.data.pixels import MaskReader, read_image
from lightseg.data.source import (
    IMAGE_SUFFIXES,
    SPLITS,
    Sample,
    SegmentationSource,
    at_least,
    listing,
)
from lightseg.errors import LightsegError


class Folder(SegmentationSource):
    """Images and masks of your own, paired by file name; see the module docs for the rules."""

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str] = ("background", "foreground"),
        images: str = "images",
        masks: str = "masks",
        mask_pattern: str = "{stem}",
        split_lists: str = "splits",
        csv: str | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_color: Sequence[int] | None = None,
        in_channels: int = 3,
    ) -> None:
        super().__init__(root)
        names = self.classes = tuple(str(c) for c in classes)
        if len(names) < 2 or len(set(names)) != len(names) or any(not n or "/" in n for n in names):
            raise LightsegError(
                f"data.source.classes={list(names)} must name at least two different classes, "
                "background first (metric names use them, so no '/' and no empty names)."
            )
        self.images, self.masks, self.split_lists, self.csv = images, masks, split_lists, csv
        self.mask_pattern = mask_pattern
        self.mask_stem = pattern_regex(mask_pattern)  # its group "stem": the image's stem
        self.mask_reader = MaskReader(self.classes, palette, ignore_color)
        self.in_channels = at_least(in_channels, 1, "data.source.in_channels")

    def find(self) -> list[Sample]:
        if not self.root.is_dir():
            raise LightsegError(
                f"data.source.root='{self.root}' does not exist. Point it at the folder that "
                f"holds {self.images}/ and {self.masks}/ (or your CSV): data=folder "
                "data.source.root=/path/to/your/data (README: Train on your own data)."
            )
        samples = self.from_csv() if self.csv else self.pair()
        if self.split_lists and (self.root / self.split_lists).is_dir():
            if self.csv and any(s.subset for s in samples):
                raise LightsegError(
                    f"'{self.root / self.csv}' has a split column and "
                    f"'{self.root / self.split_lists}' holds split lists: keep one of the two (or "
                    "set data.source.split_lists=null)."
                )
            samples = self.listed(samples)
        read_image(samples[0].image, self.in_channels)  # a wrong channel count stops early
        self.mask_reader.detect([s.mask for s in sorted(samples, key=lambda s: s.id)])
        return samples

    def pair(self) -> list[Sample]:
        """Images and masks paired by (subfolder, stem); unpaired files are an error."""
        image_dir, mask_dir = self.root / self.images, self.root / self.masks
        for folder, key in ((image_dir, "images"), (mask_dir, "masks")):
            if not folder.is_dir():
                raise LightsegError(
                    f"'{folder}' does not exist. data=folder reads images from "
                    f"'<root>/{self.images}/' and masks from '<root>/{self.masks}/' (root "
                    f"'{self.root}'): create it, set data.source.{key}=<its folder name>, or "
                    "list the pairs in a CSV (data.source.csv=<file>)."
                )
        images = files_by_stem(image_dir, pattern_regex("{stem}"), "images", [])
        if not images:
            raise LightsegError(
                f"No images in '{image_dir}': found no file ending in {', '.join(IMAGE_SUFFIXES)} "
                "(subfolders included). Put your images there, or point data.source.root at "
                "the folder that holds images/ and masks/."
            )
        unmatched: list[Path] = []
        masks = files_by_stem(mask_dir, self.mask_stem, "masks", unmatched)
        lone_images = [images[k] for k in sorted(images.keys() - masks.keys())]
        lone_masks = sorted([*(masks[k] for k in masks.keys() - images.keys()), *unmatched])
        parts = [
            f"{len(lone)} {what}: {listing([p.relative_to(self.root) for p in lone])}"
            for lone, what in (
                (lone_images, "image(s) without a mask"),
                (lone_masks, "mask(s) without an image"),
            )
            if lone
        ]
        if parts:
            raise LightsegError(
                f"Unpaired files under '{self.root}': {'; '.join(parts)}. The mask of "
                f"'{self.images}/<name>.<ext>' must be '{self.masks}/"
                f"{self.mask_pattern.replace('{stem}', '<name>')}.<ext>' (data.source.mask_pattern="
                f"'{self.mask_pattern}'; any of {' '.join(IMAGE_SUFFIXES)}). Add the missing "
                "files, move the unpaired ones out of the folder, or fix data.source.mask_pattern."
            )
        return [Sample(key, images[key], masks[key]) for key in sorted(images)]

    def from_csv(self) -> list[Sample]:
        """Pairs (and optional split and stratum) from the CSV, every file checked to exist."""
        table = self.root / self.csv
        if not table.is_file():
            raise LightsegError(f"data.source.csv='{self.csv}': '{table}' does not exist.")
        with open(table, newline="", encoding="utf-8-sig") as stream:
            reader = csvlib.DictReader(stream)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
        if not {"image", "mask"} <= set(columns):
            raise LightsegError(
                f"'{table}' has the columns {columns}, but needs 'image' and 'mask' (paths "
                "relative to data.source.root), and may have 'split' (train/val/test) and "
                "'stratum'."
            )
        if not rows:
            raise LightsegError(f"'{table}' lists no images: add one row per (image, mask) pair.")
        samples, seen, self.table = [], {}, {}
        for line, row in enumerate(rows, start=2):  # line 1 is the header
            image, mask = self.root / row["image"], self.root / row["mask"]
            for column, path in (("image", image), ("mask", mask)):
                if not row[column] or not path.is_file():
                    raise LightsegError(
                        f"'{table}' line {line}: the {column} '{row[column]}' does not exist "
                        f"(looked for '{path}'). Paths are relative to data.source.root; fix the "
                        "row or remove it."
                    )
            sample_id = Path(row["image"]).with_suffix("").as_posix()
            if sample_id in seen:
                raise LightsegError(
                    f"'{table}' lines {seen[sample_id]} and {line} both list the image "
                    f"'{sample_id}': list each image once."
                )
            seen[sample_id], self.table[sample_id] = line, row
            split = row.get("split", "").lower() or None
            if "split" in columns and split not in SPLITS:
                raise LightsegError(
                    f"'{table}' line {line}: split '{row.get('split', '')}' must be one of "
                    f"{', '.join(SPLITS)} (or drop the split column for a generated split)."
                )
            samples.append(Sample(sample_id, image, mask, row.get("stratum") or None, split))
        return sorted(samples, key=lambda s: s.id)

    def columns(self) -> dict[str, dict[str, str]]:
        """The CSV's row of each sample (``data.split.group_by`` may name a column)."""
        return getattr(self, "table", {})

    def list_entry(self, text: str) -> str | None:
        """As a source's, and a leading images folder dropped (``images/case_001.jpg``)."""
        entry = super().list_entry(text)
        parts = Path(entry).parts if entry else ()
        return Path(*parts[1:]).as_posix() if len(parts) > 1 and parts[0] == self.images else entry

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        if not self.mask_reader.decided:
            self.find()  # decides how binary masks are encoded
        return read_image(sample.image, self.in_channels), self.mask_reader.read(sample.mask)

    def describe_masks(self) -> str:
        if not self.mask_reader.decided:
            self.find()  # decides the binary encoding
        return self.mask_reader.describe()


def pattern_regex(pattern: str) -> re.Pattern:
    """``"{stem}_mask"`` -> a regex whose group ``stem`` is the image's stem."""
    if not isinstance(pattern, str) or pattern.count("{stem}") != 1 or "/" in pattern:
        raise LightsegError(
            f"data.source.mask_pattern={pattern!r} must contain {{stem}} once (the image's file "
            "name without extension), e.g. '{stem}' or '{stem}_mask', and no '/'."
        )
    before, after = pattern.split("{stem}")
    return re.compile(f"{re.escape(before)}(?P<stem>.+){re.escape(after)}")


def files_by_stem(folder: Path, stem: re.Pattern, what: str, unmatched: list[Path]) -> dict:
    """``{subfolder/image stem: path}`` of the visible image files under ``folder``; a file
    whose stem ``stem`` does not match goes to ``unmatched``, two of one stem are an error."""
    found = defaultdict(list)
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        hidden = any(part.startswith(".") for part in relative.parts)
        if hidden or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        match = stem.fullmatch(path.stem)
        if match is None:
            unmatched.append(path)
        else:
            found[relative.with_name(match["stem"]).as_posix()].append(path)
    clashes = [paths for paths in found.values() if len(paths) > 1]
    if clashes:
        listed = listing([" and ".join(map(str, paths)) for paths in clashes], 3, "; ")
        raise LightsegError(
            f"Several {what} share a name and cannot be paired: {listed}. Keep one file per name "
            "(remove or rename the others)."
        )
    return {key: paths[0] for key, paths in found.items()}

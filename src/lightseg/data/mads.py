"""MADS full-body person masks: Kaggle's "Segmentation Full Body MADS Dataset" (1,192 frames).

The archive unzips under ``root`` to ``segmentation_full_body_mads_dataset_1192_img/`` (maybe
nested once more) with ``images/``, ``masks/`` (same names) and ``df.csv``; masks are checked,
not assumed (:func:`binarise`). Splits are stratified by activity (the name's first word), and
configs/data/mads.yaml keeps each sequence's frames (``Jazz_Jazz1_C0_00010``: ``Jazz_Jazz1``, all
cameras) in one split.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lightseg.data.source import Sample, SegmentationSource, open_image, read_rgb, threshold_binary
from lightseg.errors import LightsegError

ARCHIVE_FOLDER = "segmentation_full_body_mads_dataset_1192_img"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class MADS(SegmentationSource):
    """Person vs background; frames paired through df.csv, or by file name without it."""

    classes = ("background", "person")
    how_to_get = (
        "Download 'Segmentation Full Body MADS Dataset' from Kaggle (needs a Kaggle account): "
        "https://www.kaggle.com/datasets/tapakah68/segmentation-full-body-mads-dataset, or "
        "`kaggle datasets download -d tapakah68/segmentation-full-body-mads-dataset`; then unzip "
        f"it into '<data_dir>/mads/' so that '<data_dir>/mads/{ARCHIVE_FOLDER}/images' exists "
        "(the copy nested once more inside that folder is found too)."
    )

    def folder(self) -> Path:
        """The shallowest folder under ``root`` that holds ``images/`` and ``masks/``."""
        images = [
            path
            for depth in range(4)
            for path in sorted(self.root.glob("*/" * depth + "images"))
            if path.is_dir()
        ]
        for path in images:
            if (path.parent / "masks").is_dir():
                return path.parent
        if images:
            raise LightsegError(
                f"MADS masks not found: '{images[0].parent / 'masks'}' does not exist next to "
                f"'{images[0]}'. Re-extract the Kaggle archive so that both folders are there."
            )
        raise self.missing(self.root / ARCHIVE_FOLDER / "images")

    def find(self) -> list[Sample]:
        folder = self.folder()
        table = folder / "df.csv"
        pairs = read_pairs(table, folder) if table.is_file() else pair_by_name(folder)
        samples = []
        for image, mask in pairs:
            if not image.is_file():
                raise LightsegError(f"'{table}' lists image '{image}', which does not exist.")
            if not mask.is_file():
                raise LightsegError(
                    f"MADS image '{image}' has no mask: expected '{mask}'. Re-extract the Kaggle "
                    "archive, or delete the image to skip it."
                )
            samples.append(Sample(image.stem, image, mask, stratum=image.stem.split("_")[0]))
        if not samples:
            raise self.missing(folder / "images" / "*.png")
        return self.listed(samples)

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        return read_rgb(sample.image), binarise(np.asarray(open_image(sample.mask)), sample.mask)


def pair_by_name(folder: Path) -> list[tuple[Path, Path]]:
    images = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [(image, folder / "masks" / image.name) for image in images]


def read_pairs(table: Path, folder: Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths from df.csv; entries are relative to ``folder`` (or bare names)."""
    with open(table, newline="") as stream:
        rows = list(csv.DictReader(stream))
    if not rows or not {"images", "masks"} <= rows[0].keys():
        raise LightsegError(
            f"'{table}' should have the columns 'images' and 'masks' (and one row per frame). "
            "Re-extract the Kaggle archive, or delete df.csv to pair files by name."
        )

    def resolve(entry: str, kind: str) -> Path:
        path = folder / entry.strip()
        return path if path.is_file() else folder / kind / Path(entry.strip()).name

    return [(resolve(row["images"], "images"), resolve(row["masks"], "masks")) for row in rows]


def binarise(values: np.ndarray, path: Path) -> np.ndarray:
    """A 0/1 person mask: 0/1 masks as they are, 0/255 ones thresholded and checked to be
    binary (RGB: the brightest channel)."""
    if values.ndim == 3:
        values = values[..., :3].max(axis=-1)
    if values.dtype == bool or values.max(initial=0) <= 1:
        return values.astype(np.uint8)
    hint = "Expected 0/255 or 0/1 person masks; check that images/ and masks/ are not swapped."
    return threshold_binary(values, path, "MADS mask", hint)

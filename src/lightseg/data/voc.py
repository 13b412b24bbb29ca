"""PASCAL VOC 2012 segmentation (Everingham et al., IJCV 2010), with optional SBD augmentation.

``root`` and ``sbd_root`` are read as the official archives unpack (README: Datasets). With
``use_sbd`` the train split is the usual ``train_aug`` (10,582 images): VOC train plus SBD train
and val, minus the val/test ids; ids with a VOC mask use it, as it has the 255 borders.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from lightseg.data.source import (
    Sample,
    SegmentationSource,
    check_labels,
    official_split,
    read_label_png,
    read_rgb,
    subset_map,
)
from lightseg.errors import LightsegError

log = logging.getLogger(__name__)

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
    "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
LISTS = Path("ImageSets") / "Segmentation"
TRAIN_AUG = "train_aug"
FULL_SIZES = {"train": 1464, "val": 1449, TRAIN_AUG: 10582}  # of the complete releases
DEFAULT_SPLITS = {"train": "train", "val": "val", "test": "val"}


class VOC(SegmentationSource):
    """VOC 2012 segmentation lists; ``test`` defaults to the val list (test masks are withheld)."""

    classes = VOC_CLASSES
    how_to_get = (
        "Run `python -m lightseg.data.download data=voc` (downloads VOCtrainval_11-May-2012.tar, "
        "2 GB, and SBD's benchmark.tgz, 1.4 GB), or download them from "
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ and "
        "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/ "
        "and unpack both into <data_dir>, so that '<data_dir>/VOCdevkit/VOC2012/JPEGImages' "
        "and '<data_dir>/benchmark_RELEASE/dataset/cls' exist."
    )

    def __init__(
        self,
        root: str | Path,
        splits: Mapping[str, str] | None = None,
        use_sbd: bool = False,
        sbd_root: str | Path | None = None,
    ) -> None:
        super().__init__(root)
        self.splits = subset_map(splits or DEFAULT_SPLITS)
        self.use_sbd = bool(use_sbd)
        self.sbd_root = Path(sbd_root or self.root / ".." / ".." / "benchmark_RELEASE" / "dataset")
        self.voc_train = self.splits["train"]  # the VOC list that train_aug extends
        if self.use_sbd:
            self.splits["train"] = TRAIN_AUG

    def find(self) -> list[Sample]:
        if not (self.root / "JPEGImages").is_dir() or not (self.root / LISTS).is_dir():
            raise self.missing(self.root / LISTS)
        names = set(self.splits.values())
        lists = {name: self.read_list(name) for name in names - {TRAIN_AUG}}
        samples = [self.voc_sample(i, name) for name, ids in lists.items() for i in ids]
        if TRAIN_AUG in names:
            held_out = {i for split in ("val", "test") for i in lists[self.splits[split]]}
            samples += self.train_aug(held_out)
        return samples

    def read_list(self, name: str) -> list[str]:
        available = sorted(p.stem for p in (self.root / LISTS).glob("*.txt"))
        return read_ids(
            self.root / LISTS / f"{name}.txt",
            f"data.source.splits={self.splits} must name lists in that folder: {available}. "
            "(train_aug needs data.source.use_sbd=true.)",
        )

    def voc_sample(self, image_id: str, list_name: str, subset: str | None = None) -> Sample:
        image = self.root / "JPEGImages" / f"{image_id}.jpg"
        mask = self.root / "SegmentationClass" / f"{image_id}.png"
        listed_in = f"'{self.root / LISTS / list_name}.txt'"
        check_listed(image_id, (image, mask), listed_in, "VOCtrainval_11-May-2012.tar")
        return Sample(image_id, image, mask, subset=subset or list_name)

    def train_aug(self, held_out: set[str]) -> list[Sample]:
        """VOC train + SBD train + SBD val, minus ``held_out``; VOC masks where they exist."""
        if not (self.sbd_root / "cls").is_dir():
            raise LightsegError(
                f"data.source.use_sbd=true, but SBD was not found: looked for "
                f"'{self.sbd_root / 'cls'}'. {self.how_to_get} Or train on VOC alone with "
                "data.source.use_sbd=false."
            )
        voc_train = self.read_list(self.voc_train)
        fix = (
            f"re-extract SBD's benchmark.tgz so that '{self.sbd_root}' holds cls/, img/, "
            "train.txt and val.txt."
        )
        sbd = [i for n in ("train", "val") for i in read_ids(self.sbd_root / f"{n}.txt", fix)]
        ids = [i for i in dict.fromkeys([*voc_train, *sbd]) if i not in held_out]  # ordered, unique
        in_voc = set(voc_train)
        samples = [
            self.voc_sample(i, self.voc_train, TRAIN_AUG) if i in in_voc else self.sbd_sample(i)
            for i in ids
        ]
        full = len(voc_train) == FULL_SIZES["train"] and len(held_out) == FULL_SIZES["val"]
        if full and len(ids) != FULL_SIZES[TRAIN_AUG]:
            log.warning(
                f"train_aug has {len(ids)} images; the full VOC 2012 + SBD releases give "
                f"{FULL_SIZES[TRAIN_AUG]}. Check that SBD's train.txt and val.txt are complete."
            )
        log.info("VOC train_aug: %d images (minus %d held-out ids)", len(ids), len(held_out))
        return samples

    def sbd_sample(self, image_id: str) -> Sample:
        image = self.root / "JPEGImages" / f"{image_id}.jpg"
        if not image.is_file():
            image = self.sbd_root / "img" / f"{image_id}.jpg"
        mask = self.sbd_root / "cls" / f"{image_id}.mat"
        listed_in = f"SBD's '{self.sbd_root}/train.txt' or val.txt"
        check_listed(image_id, (image, mask), listed_in, "SBD's benchmark.tgz")
        return Sample(image_id, image, mask, subset=TRAIN_AUG)

    def split(self, samples, fractions, seed) -> dict[str, list[Sample]]:
        """The official lists named by ``splits``; ``data.split`` fractions do not apply."""
        return official_split(samples, self.splits)

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        read_mask = read_sbd_mask if sample.mask.suffix == ".mat" else read_label_png
        return read_rgb(sample.image), read_mask(sample.mask, len(self.classes))


def check_listed(image_id: str, paths: tuple[Path, ...], listed_in: str, archive: str) -> None:
    """The error for a list entry whose image or mask file is missing."""
    for path in paths:
        if not path.is_file():
            raise LightsegError(
                f"{listed_in} lists '{image_id}', but '{path}' does not exist. Re-extract "
                f"{archive} into the data folder."
            )


def read_ids(path: Path, fix: str) -> list[str]:
    """The ids of a VOC/SBD list file: one per line, blank lines skipped."""
    if not path.is_file():
        raise LightsegError(f"List '{path}' not found: {fix}")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def read_sbd_mask(path: Path, num_classes: int) -> np.ndarray:
    """Class indices of an SBD ``cls/<id>.mat`` file (``GTcls.Segmentation``)."""
    try:
        segmentation = np.asarray(scipy.io.loadmat(path)["GTcls"][0, 0]["Segmentation"], np.uint8)
    except (OSError, ValueError, KeyError, IndexError, TypeError, MatReadError) as error:
        raise LightsegError(
            f"Cannot read SBD mask '{path}' ({type(error).__name__}: {error}): expected a MATLAB "
            "file with a struct GTcls holding a Segmentation field. Re-extract SBD's benchmark.tgz."
        ) from None
    return check_labels(segmentation, num_classes, path)

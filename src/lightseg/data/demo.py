"""Deterministic synthetic lesions written in PH2's exact on-disk layout.

So that ``make train`` works on a fresh machine and exercises the real PH2 reader: 24-bit BMPs
of odd sizes, 1-bit masks, ``_roi`` folders to ignore, and a ``PH2_dataset.xlsx`` like PH2's.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import openpyxl
from PIL import Image

from lightseg.data.ph2 import DIAGNOSES_FILE, IMAGES_FOLDER, PH2

log = logging.getLogger(__name__)

VERSION = "2"  # bump when the generator changes, so old copies are rewritten
DIAGNOSES = ("Common Nevus", "Atypical Nevus", "Melanoma")


class Demo(PH2):
    """PH2-format synthetic data, generated under ``root`` on first use."""

    how_to_get = "It is generated automatically; check that the data folder is writable."

    def __init__(
        self,
        root: str | Path,
        num_cases: int = 80,
        seed: int = 0,
        split_lists: str | Path | None = None,
    ) -> None:
        super().__init__(root, split_lists)
        self.num_cases, self.seed = int(num_cases), int(seed)

    def prepare(self) -> None:
        """Write the cases once; each (num_cases, seed) has its own folder (configs/data/demo.yaml)
        so that other settings never rewrite the data of a run that is training."""
        marker = self.root / ".lightseg-demo"
        stamp = f"{VERSION} {self.num_cases} {self.seed}"
        if marker.is_file() and marker.read_text() == stamp:
            return
        log.info("Writing %d demo cases in PH2 layout to %s", self.num_cases, self.root)
        shutil.rmtree(self.root / IMAGES_FOLDER, ignore_errors=True)  # a partial copy
        write_demo(self.root, self.num_cases, self.seed)
        marker.write_text(stamp)


def smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid, upsampled bicubically."""
    coarse = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
    image = Image.fromarray(coarse, mode="F").resize((width, height), Image.BICUBIC)
    return np.clip(np.asarray(image), -1, 1)


def synthetic_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One skin-like image with an irregular pigmented lesion, hairs, and its mask."""
    height, width = int(rng.integers(100, 131)), int(rng.integers(140, 181))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    skin = np.array([222, 176, 152], np.float32) * rng.uniform(0.85, 1.1)
    image = skin * (1 + 0.07 * smooth_noise(rng, height, width, 6))[..., None]

    cy, cx = height * rng.uniform(0.35, 0.65), width * rng.uniform(0.35, 0.65)
    radius = min(height, width) * rng.uniform(0.16, 0.3)
    angle = np.arctan2(yy - cy, (xx - cx) / rng.uniform(1.0, 1.5))
    wobble = sum(
        rng.uniform(0, 0.12) * np.sin(k * angle + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    distance = np.hypot(yy - cy, (xx - cx) / rng.uniform(1.0, 1.4)) / (radius * (1 + wobble))
    mask = distance < 1.0

    pigment = np.array([118, 72, 52], np.float32) * rng.uniform(0.6, 1.2)
    pigment = pigment * (1 + 0.15 * smooth_noise(rng, height, width, 10))[..., None]
    alpha = np.clip((1.0 - distance) / 0.08, 0, 1)[..., None]  # a soft edge, as in dermoscopy
    image = image * (1 - alpha) + pigment * alpha

    for _ in range(int(rng.integers(0, 4))):  # hairs cross the lesion but are not part of it
        y0, y1 = rng.uniform(0, height, 2)
        on_hair = np.abs((yy - y0) - (y1 - y0) * xx / width) < rng.uniform(0.5, 1.2)
        image[on_hair] = image[on_hair] * 0.35
    image = image + rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_demo(root: Path, num_cases: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    images = root / IMAGES_FOLDER
    rows, areas = [], []
    for index in range(num_cases):
        case = f"IMD{index + 1:03d}"
        image, mask = synthetic_case(rng)
        folder = images / case
        (folder / f"{case}_Dermoscopic_Image").mkdir(parents=True, exist_ok=True)
        (folder / f"{case}_lesion").mkdir(exist_ok=True)
        Image.fromarray(image).save(folder / f"{case}_Dermoscopic_Image" / f"{case}.bmp")
        Image.fromarray(mask).convert("1").save(folder / f"{case}_lesion" / f"{case}_lesion.bmp")
        if index % 7 == 0:  # the real archive has a few irregular ROI folders
            (folder / f"{case}_roi").mkdir(exist_ok=True)
            Image.fromarray(mask).convert("1").save(folder / f"{case}_roi" / f"{case}_R1_Roi.bmp")
        rows.append(case)
        areas.append(mask.mean())
    write_diagnoses(root / DIAGNOSES_FILE, list(zip(rows, diagnoses(areas), strict=True)))


def diagnoses(areas: list[float]) -> list[str]:
    """A diagnosis per case that follows its lesion's share of the image, so that the strata
    (``make table ARGS="--by stratum"``) differ in difficulty: in each block of five cases, the
    two smallest lesions are common nevi, the next two atypical, the largest a melanoma (2:2:1,
    like PH2's 80:80:40)."""
    labels = []
    for start in range(0, len(areas), 5):
        block = areas[start : start + 5]
        ranks = np.argsort(np.argsort(block))  # 0: the smallest lesion of the block
        labels += [DIAGNOSES[min(2, int(rank) // 2)] for rank in ranks]
    return labels


def write_diagnoses(path: Path, rows: list[tuple[str, str]]) -> None:
    """An .xlsx shaped like PH2_dataset.xlsx: legend block, two header rows, "X" marks."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Legend:"])
    sheet.append(["Clinical Diagnosis:", "Common Nevus; Atypical Nevus; Melanoma"])
    sheet.append(["Colors:", "White; Red; Light-Brown; Dark-Brown; Blue-Gray; Black"])
    for _ in range(9):
        sheet.append([])
    sheet.append(["Image Name", "Histological Diagnosis", "Clinical Diagnosis", None, None])
    sheet.append([None, None, "Common Nevus", "Atypical Nevus", "Melanoma"])
    for case, diagnosis in rows:
        sheet.append([case, None, *("X" if d == diagnosis else None for d in DIAGNOSES)])
    path.parent.mkdir(parents=True, exist_ok=True)
    book.save(path)

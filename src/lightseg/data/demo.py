"""Deterministic synthetic lesions written in PH2's exact on-disk layout.

So that ``make train`` works on a fresh machine and exercises the real PH2 reader: 24-bit BMPs
of odd sizes, 1-bit masks, ``_roi`` folders to ignore, and a ``PH2_dataset.xlsx`` like PH2's.
``hard=True`` (``data=demo_hard``) draws what makes dermoscopy hard, to tell recipes apart where
the plain demo cannot (both end near Dice 0.98): :func:`hard_case`.
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
        hard: bool = False,
    ) -> None:
        super().__init__(root, split_lists)
        self.num_cases, self.seed, self.hard = int(num_cases), int(seed), bool(hard)

    def prepare(self) -> None:
        """Write the cases once; each (num_cases, seed) has its own folder (configs/data/demo.yaml)
        so that other settings never rewrite the data of a run that is training."""
        marker = self.root / ".lightseg-demo"
        stamp = f"{VERSION} {self.num_cases} {self.seed}" + (" hard" if self.hard else "")
        if marker.is_file() and marker.read_text() == stamp:
            return
        log.info("Writing %d demo cases in PH2 layout to %s", self.num_cases, self.root)
        shutil.rmtree(self.root / IMAGES_FOLDER, ignore_errors=True)  # a partial copy
        write_demo(self.root, self.num_cases, self.seed, hard_case if self.hard else synthetic_case)
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


def hard_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A harder case: a colour cast, vignetting, a low-contrast lesion of 1-3 irregular parts
    (5-70 % of the image, sometimes cut by the border) with a fuzzy edge, hairs, bubbles."""
    height, width = int(rng.integers(110, 141)), int(rng.integers(150, 191))
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    skin = np.array([222, 176, 152], np.float32) * rng.uniform(0.8, 1.2, 3)  # colour cast
    image = skin * (1 + 0.1 * smooth_noise(rng, height, width, 8))[..., None]
    target, parts = rng.uniform(0.05, 0.7), int(rng.choice([1, 1, 2, 3]))
    distance = np.full((height, width), np.inf, np.float32)
    for part in range(parts):
        share = target * (0.7 if part == 0 and parts > 1 else 0.3 / max(parts - 1, 1))
        radius = np.sqrt(share * height * width / np.pi)
        lo = 0.25 if part == 0 else 0.05  # the main part near the middle, others anywhere
        cy, cx = rng.uniform(lo, 1 - lo) * height, rng.uniform(lo, 1 - lo) * width
        stretch = rng.uniform(1.0, 1.6)
        angle = np.arctan2(yy - cy, (xx - cx) / stretch)
        wobble = sum(
            rng.uniform(0, 0.25) * np.sin(k * angle + rng.uniform(0, 2 * np.pi))
            for k in (2, 3, 5, 7)
        )
        wobble = wobble + 0.15 * smooth_noise(rng, height, width, 5)
        part_distance = np.hypot(yy - cy, (xx - cx) / stretch) / (radius * (1 + wobble))
        distance = np.minimum(distance, part_distance)
    distance = distance / np.quantile(distance, target)  # exactly `target` of the image
    mask = distance < 1.0
    contrast = rng.uniform(0.2, 0.55)  # how much darker the lesion is than the skin
    pigment = skin * (1 - contrast) * rng.uniform(0.85, 1.15, 3)
    pigment = pigment * (1 + 0.25 * smooth_noise(rng, height, width, 12))[..., None]
    edge = rng.uniform(0.08, 0.35)  # fuzzy borders: the truth is at distance 1
    alpha = np.clip((1.0 - distance) / edge + 0.5, 0, 1)[..., None]
    image = image * (1 - alpha) + pigment * alpha
    for _ in range(int(rng.integers(0, 12))):  # hairs, some curved
        y0, y1, bend = rng.uniform(0, height), rng.uniform(0, height), rng.uniform(-20, 20)
        path = y0 + (y1 - y0) * xx / width + bend * np.sin(np.pi * xx / width)
        image[np.abs(yy - path) < rng.uniform(0.5, 1.5)] *= rng.uniform(0.2, 0.5)
    for _ in range(int(rng.integers(0, 4))):  # air bubbles: bright rings
        cy, cx, r = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(4, 15)
        ring = np.abs(np.hypot(yy - cy, xx - cx) - r) < 1.2
        image[ring] = image[ring] * 0.4 + 150
    radius = np.hypot((yy - height / 2) / height, (xx - width / 2) / width) * 2
    image = image * np.clip(1 - rng.uniform(0.2, 0.8) * radius**3, 0.05, 1)[..., None]  # vignette
    image = image + rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_demo(root: Path, num_cases: int, seed: int, draw=synthetic_case) -> None:
    rng = np.random.default_rng(seed)
    images = root / IMAGES_FOLDER
    rows, areas = [], []
    for index in range(num_cases):
        case = f"IMD{index + 1:03d}"
        image, mask = draw(rng)
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

"""PH2 dermoscopy lesions (Mendonca et al., EMBC 2013), as the official archive unpacks.

Layout under ``root`` (``${paths.data_dir}/PH2Dataset``)::

    PH2 Dataset images/IMD002/IMD002_Dermoscopic_Image/IMD002.bmp   24-bit RGB, ~765x570
    PH2 Dataset images/IMD002/IMD002_lesion/IMD002_lesion.bmp       1-bit lesion mask
    PH2 Dataset images/IMD002/IMD002_roi/...                        other ROIs (not used)
    PH2_dataset.xlsx                                                 diagnoses, used to stratify

``split_lists``: a folder of train/val/test.txt (case ids) for a published or your own split.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import openpyxl

from lightseg.data.source import Sample, SegmentationSource, open_image, read_rgb
from lightseg.errors import LightsegError

log = logging.getLogger(__name__)

IMAGES_FOLDER = "PH2 Dataset images"
DIAGNOSES_FILE = "PH2_dataset.xlsx"
CASE_ID = re.compile(r"^IMD\d+$")
# Header words of the three "Clinical Diagnosis" columns (the real sheet spells one "Commom").
DIAGNOSIS_HEADERS = {"comm": "common_nevus", "atypical": "atypical_nevus", "melanoma": "melanoma"}


class PH2(SegmentationSource):
    """200 dermoscopic images with lesion masks; splits stratified by clinical diagnosis."""

    classes = ("background", "lesion")
    how_to_get = (
        "Download PH2 from https://www.fc.up.pt/addi/ph2%20database.html (free registration) and "
        "unpack it so that '<data_dir>/PH2Dataset/PH2 Dataset images/IMD002/...' exists."
    )

    def find(self) -> list[Sample]:
        images = self.root / IMAGES_FOLDER
        if not images.is_dir():
            raise self.missing(images)
        diagnoses = read_diagnoses(self.root / DIAGNOSES_FILE)
        samples = []
        for case in sorted(p for p in images.iterdir() if CASE_ID.match(p.name)):
            image = case / f"{case.name}_Dermoscopic_Image" / f"{case.name}.bmp"
            mask = case / f"{case.name}_lesion" / f"{case.name}_lesion.bmp"
            for path, what in ((image, "dermoscopic image"), (mask, "lesion mask")):
                if not path.is_file():
                    raise LightsegError(
                        f"PH2 case folder '{case}' has no {what}: expected '{path}'. Re-extract "
                        "this case from the PH2 archive, or delete the case folder to skip it."
                    )
            samples.append(Sample(case.name, image, mask, stratum=diagnoses.get(case.name)))
        if not samples:
            raise self.missing(images / "IMDxxx")
        return self.listed(samples)

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        mask = np.asarray(open_image(sample.mask).convert("L")) > 127
        return read_rgb(sample.image), mask.astype(np.uint8)


def read_diagnoses(path: Path) -> dict[str, str]:
    """Case id -> diagnosis from the sheet: a legend, a two-row header, a row per case with an
    "X" (empty if the file is absent)."""
    if not path.is_file():
        log.warning("%s not found: PH2 splits will not be stratified by diagnosis.", path)
        return {}
    try:
        rows = list(openpyxl.load_workbook(path, read_only=True).active.iter_rows(values_only=True))
    except Exception as error:  # openpyxl raises many types for a damaged file
        raise LightsegError(f"Cannot read PH2 diagnoses '{path}' ({error}).") from None
    text = [[str(v).strip().lower() if v is not None else "" for v in row] for row in rows]
    header = next((i for i, row in enumerate(text) if "image name" in row), None)
    if header is None:
        raise LightsegError(f"'{path}' has no 'Image Name' header: is it PH2's PH2_dataset.xlsx?")
    name_col = text[header].index("image name")
    columns: dict[int, str] = {}
    for row in text[header : header + 2]:
        for col, cell in enumerate(row):
            for word, diagnosis in DIAGNOSIS_HEADERS.items():
                if cell.startswith(word) or (word != "comm" and word in cell):
                    columns[col] = diagnosis
    if len(set(columns.values())) != 3:
        raise LightsegError(f"'{path}': could not find the three clinical diagnosis columns.")
    diagnoses = {}
    for row in rows[header + 1 :]:
        name = str(row[name_col] or "").strip()
        if CASE_ID.match(name):
            marked = [d for c, d in columns.items() if str(row[c] or "").strip().upper() == "X"]
            diagnoses[name] = marked[0] if len(marked) == 1 else "unknown"
    return diagnoses

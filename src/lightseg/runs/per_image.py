"""The ``per_image.csv`` format: one row per image, then every metric's value for it.

Columns: ``id`` (and in ``make eval``'s file, ``variant``: plain, tta, ...), then one column per
metric value (``dice``, ``iou_lesion``, ...); empty where there is none (NaN). Training's test
stage (``callbacks.PerImageResults``) and ``make eval`` write it; ``make table`` reads it to pair
the same images between runs.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

#: The columns that name a row rather than hold a value.
KEYS = ("id", "variant")


def cell(value: object, digits: int = 6) -> str:
    """A value as CSV files and tables show it: floats to ``digits`` places, NaN and None empty."""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.{digits}f}"
    return "" if value is None else str(value)


def write_per_image(path: Path, rows: Iterable[Mapping[str, object]]) -> None:
    """``rows``: ``{"id": ..., ["variant": ...,] metric: value, ...}``, one per image."""
    rows = list(rows)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with Path(path).open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        writer.writerows([cell(row.get(column)) for column in columns] for row in rows)


def read_per_image(path: Path, prefix: str, variant: str | None = None) -> dict:
    """``{<prefix><metric>: {image id: value}}`` from a per_image.csv (NaN: no value); with
    ``variant``, the rows of that inference variant only."""
    if not path.is_file():
        return {}
    out: dict[str, dict[str, float]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            if variant is not None and row.get("variant", variant) != variant:
                continue
            for name, text in row.items():
                if name not in KEYS:
                    value = float(text) if text else math.nan
                    out.setdefault(f"{prefix}{name}", {})[row["id"]] = value
    return out

"""The ``per_image.csv`` format: one row per image, then every metric's value for it.

Columns: ``id`` (and in ``make eval``'s file, ``variant``: plain, tta, ...), ``stratum`` (the
image's ``Sample.stratum``: diagnosis, activity, ...; empty without one; files written before it
existed lack the column), then one column per metric value (``dice``, ``iou_lesion``, ...); empty
where there is none (NaN). The failure columns
``failure_rate/<metric>_below_<t>`` hold 1 where the image's value is below ``t`` (the config's
``failure``), else 0: their mean over the images is the share that failed. Training's test
stage (``callbacks.PerImageResults``), ``make eval`` and ``make score`` write it; ``make table``
reads it to pair the same images between runs.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping
from pathlib import Path

from lightseg.errors import LightsegError

#: The columns that name a row rather than hold a value.
KEYS = ("id", "variant", "stratum")


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


def failure_thresholds(failure: Mapping[str, object] | None) -> dict[str, float]:
    """The config's ``failure`` ({metric: threshold}), each threshold checked to be a number."""
    for name, threshold in (failure or {}).items():
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise LightsegError(
                f"failure.{name}={threshold} is not a number: an image fails below it (set "
                f"failure.{name}=0.65, or remove it: ~failure.{name})."
            )
    return {name: float(threshold) for name, threshold in (failure or {}).items()}


def with_failures(values: Mapping[str, float], thresholds: Mapping[str, float]) -> dict:
    """An image's ``values`` plus its failure columns (NaN where the metric has no value: an
    empty mask neither fails nor passes)."""
    flags = {
        f"failure_rate/{name}_below_{threshold:g}": (
            math.nan if math.isnan(value := float(values[name])) else float(value < threshold)
        )
        for name, threshold in thresholds.items()
        if name in values
    }
    return {**values, **flags}


def failure_shares(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Each failure column's share of images that failed, over the images that have a value."""
    flags: dict[str, list[float]] = {}
    for row in rows:
        for name, value in row.items():
            if name.startswith("failure_rate/") and not math.isnan(value):
                flags.setdefault(name, []).append(value)
    return {name: sum(values) / len(values) for name, values in sorted(flags.items())}


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


def read_strata(path: Path, variant: str | None = None) -> dict[str, str] | None:
    """``{image id: stratum}`` ("" without one) from a per_image.csv; None when the file has no
    ``stratum`` column (written before lightseg recorded strata) or does not exist."""
    if not path.is_file():
        return None
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        if "stratum" not in (reader.fieldnames or ()):
            return None
        rows = [r for r in reader if variant is None or r.get("variant", variant) == variant]
    return {row["id"]: row["stratum"] for row in rows}

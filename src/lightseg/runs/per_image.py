"""The ``per_image.csv`` format, one row per image: ``id`` (in ``make eval``'s file also
``variant``: plain, tta, ...), ``stratum`` (``Sample.stratum``, empty without one; older files
lack the column), then each metric's value (empty: none, NaN). ``failure_rate/<metric>_below_<t>``
is 1 where the value is below ``t`` (the config's ``failure``), else 0: its mean is the share that
failed. Training's test stage, ``make eval`` and ``make score`` write it; ``make table`` reads it
to pair the same images between runs."""

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


def rows_of(path: Path, variant: str | None) -> tuple[list[str], list[dict[str, str]]]:
    """A per_image.csv's columns and rows (with ``variant``: that inference variant's only)."""
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = [r for r in reader if variant is None or r.get("variant", variant) == variant]
    return list(reader.fieldnames or ()), rows


def read_per_image(path: Path, prefix: str, variant: str | None = None) -> dict:
    """``{<prefix><metric>: {image id: value}}`` from a per_image.csv (NaN: no value); with
    ``variant``, the rows of that inference variant only."""
    out: dict[str, dict[str, float]] = {}
    for row in rows_of(path, variant)[1] if path.is_file() else ():
        for name, text in row.items():
            if name not in KEYS:
                out.setdefault(f"{prefix}{name}", {})[row["id"]] = float(text) if text else math.nan
    return out


def read_strata(path: Path, variant: str | None = None) -> dict[str, str] | None:
    """``{image id: stratum}`` ("" without one) from a per_image.csv; None when the file has no
    ``stratum`` column (written before lightseg recorded strata) or does not exist."""
    columns, rows = rows_of(path, variant) if path.is_file() else ([], [])
    return {row["id"]: row["stratum"] for row in rows} if "stratum" in columns else None

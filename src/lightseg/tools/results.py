"""Each run's results in a folder of runs (its final metrics and each test image's values, from
training's test stage or its newest ``make eval``), grouped into the rows of ``make table``: runs
that differ only in replicates (seeds, data splits, folds) form one row, labelled by the
settings that differ."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lightseg.errors import LightsegError, one_line
from lightseg.runs import RunFolder, find_runs
from lightseg.runs.folder import PER_IMAGE, read_json, read_yaml
from lightseg.runs.per_image import read_per_image, read_strata
from lightseg.runs.protocol import comparison, describe
from lightseg.runs.resume import override_key
from lightseg.tools.significance import image_means

#: Overrides that make no other configuration: replicates (seeds, splits, folds), paths, logging.
NOT_A_SETTING = (
    "seed",
    "data.split.seed",
    "data.split.fold",
    "ckpt_path",
    "resume",
    "print_config",
    "tags",
    "data.num_workers",
)
NOT_A_SETTING_PREFIXES = ("paths.", "hydra.", "hydra/", "logger", "callbacks.progress_bar")


@dataclass(frozen=True)
class NumbersFrom:
    """Where a run's numbers are read from: training's test stage, or ``make eval``."""

    eval: bool = False
    split: str = "test"
    variant: str | None = None  # eval only; default: the last one (what eval ranked)

    def describe(self) -> str:
        if not self.eval:
            return "metrics.json and per_image.csv of training (test stage, training size)"
        variant = f"variant {self.variant}" if self.variant else "its last variant"
        return f"eval.json and per_image.csv of make eval ({self.split} split, {variant})"


TEST_STAGE = NumbersFrom()


@dataclass
class RunResult:
    """One run folder: what it was run with, and its final metrics if it finished."""

    folder: Path
    overrides: list[str]
    values: dict[str, str]  # group choices and resolved config values, flattened
    metrics: dict[str, float | None] | None
    status: str
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> id -> v
    strata: dict[str, str] | None = None  # id -> stratum; None: per_image.csv has no such column
    per_image_file: Path | None = None  # where per_image and strata were read from
    protocol: dict | None = None  # the card beside the numbers (None: written before cards)
    variant: str | None = None  # eval: the variant read, whose inference the card gives
    published: str | None = None  # a published number's source (shown, never paired)

    def setting(self, key: str) -> str:
        for override in self.overrides:
            if override_key(override) == key:
                return self.values.get(key, override.split("=", 1)[-1])
        return self.values.get(key, "-")

    @property
    def debug(self) -> str | None:
        """The ``debug`` config it ran with (``fdr``, ``limit``, ...), if any."""
        choice = self.values.get("debug")
        return None if choice in (None, "None", "null", "") else choice


@dataclass
class Row:
    label: str
    runs: list[RunResult] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if (r.metrics or {}).get(metric) is not None]

    @property
    def finished(self) -> int:
        return sum(r.metrics is not None for r in self.runs)

    def comparison(self, metric: str) -> dict | None:
        """Its runs' comparison records merged: each field's values (several for k-fold test
        sets), None if a finished run has no card."""
        records = [
            comparison(r.protocol, metric, r.variant) for r in self.runs if r.metrics is not None
        ]
        if not records or None in records:
            return None
        merged = {}
        for key in records[0]:
            values = sorted({str(r[key]) for r in records if r[key] is not None})
            merged[key] = " + ".join(values) if values else None
        return merged

    def protocol_text(self) -> str:
        """The row's protocol in a few words (the first run's, and how many splits more)."""
        texts = [describe(r.protocol, r.variant) for r in self.runs if r.metrics is not None]
        more = len(set(texts)) - 1
        return (texts[0] if texts else "no finished run") + (f" and {more} more" if more else "")

    def tested(self, metric: str) -> set[str]:
        """The ids of the images the row's runs scored (with or without a value)."""
        return {i for r in self.runs for i in r.per_image.get(metric, {})}

    def images(self, metric: str) -> dict[str, float]:
        """Each image's value, averaged over the runs that scored it (seeds, or data splits
        that share images); images without a value are left out."""
        return image_means([run.per_image.get(metric, {}) for run in self.runs])


def eval_results(run: RunFolder, numbers_from: NumbersFrom) -> tuple[dict | None, Path | None, str]:
    """(the metrics of the newest ``make eval`` of the split, its per_image.csv, the variant
    read; or None, None, why there are none)."""
    split = numbers_from.split
    reports = sorted(run.evaluations.glob(f"{split}_*/eval.json"))
    if not reports:
        why = f"no eval/{split}_*/eval.json (make eval CKPT=<run>/checkpoints/best.ckpt)"
        return None, None, why
    try:
        report = json.loads(reports[-1].read_text())
        variant = numbers_from.variant or report["examples_from"]
        metrics = dict(report["metrics"][variant])
        if coverage := report.get("coverage", {}).get(variant):  # Dice vs coverage: its area
            metrics["coverage_area"] = coverage["area"]
    except (OSError, ValueError, KeyError):
        return None, None, f"{reports[-1]} has no metrics for variant {numbers_from.variant}"
    return {f"{split}/{k}": v for k, v in metrics.items()}, reports[-1].parent / PER_IMAGE, variant


def read_run(run: RunFolder, numbers_from: NumbersFrom = TEST_STAGE) -> RunResult:
    config = read_yaml(run.config) or read_yaml(run.hydra_config)
    flat = pd.json_normalize(config if isinstance(config, dict) else {}).to_dict("records")[0]
    # keys dotted (model.arch), and the group choices
    values = {key: str(value) for key, value in {**flat, **run.group_choices()}.items()}
    trained = run.read_metrics()
    protocol = trained.pop("protocol", None) if trained else None
    metrics, path, variant, prefix = trained, run.per_image, None, "test/"
    status = "finished"
    if numbers_from.eval:
        metrics, path, variant = eval_results(run, numbers_from)
        prefix = f"{numbers_from.split}/"
        if metrics is None:  # trained, but not evaluated: say so
            status, variant = variant, None
        protocol = (read_json(path.parent / "eval.json") or {}).get("protocol") if path else None
    if metrics is None and trained is None:  # how training ended
        info = run.info()
        if info is None:
            status = "no metrics.json (never started, or killed before run_info.json)"
        elif info.get("status") in ("finished", "running"):
            status = "no metrics.json (still running, or killed)"
        else:
            status = f"{info.get('status')}: {one_line(info.get('message') or '')}".strip(": ")
    per_image = read_per_image(path, prefix, variant) if path else {}
    strata = read_strata(path, variant) if path else None
    return RunResult(
        run.path,
        run.overrides(),
        values,
        metrics,
        status,
        per_image,
        strata,
        path,
        protocol,
        variant,
    )


def published_rows(path: str | Path | None) -> list[Row]:
    """Rows of published numbers from a YAML list (or ``{rows: [...]}``) of ``name``,
    ``source``, ``metrics`` (``{test/dice: 0.91}``) and an optional ``protocol`` card."""
    if not path:
        return []
    entries = read_yaml(Path(path))
    entries = entries.get("rows") if isinstance(entries, dict) else entries
    wanted = "a YAML list of {name, source, metrics: {test/dice: 0.91}, protocol: {...}}"
    if not isinstance(entries, list) or not entries:
        raise LightsegError(f"published='{path}' is missing or not {wanted}. Fix the file.")
    rows = []
    for entry in entries:
        numbers = entry.get("metrics") if isinstance(entry, dict) else None
        if not isinstance(numbers, dict) or not entry.get("name") or not entry.get("source"):
            raise LightsegError(
                f"published='{path}': the entry {entry!r} lacks a name, a source or its "
                f"metrics; each entry is {wanted}."
            )
        result = RunResult(Path(path), [], {}, {k: float(v) for k, v in numbers.items()}, "")
        result.protocol, result.published = entry.get("protocol"), str(entry["source"])
        rows.append(Row(f"{entry['name']} (published)", [result]))
    return rows


def short_names(keys: Sequence[str], aliases: Mapping[str, str]) -> dict[str, str]:
    """Each key's label: its alias, else its shortest dotted suffix no other key ends with."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for start in range(len(parts) - 1, -1, -1):
            suffix = ".".join(parts[start:])
            if not any(k != key and (k == suffix or k.endswith(f".{suffix}")) for k in keys):
                break
        names[key] = aliases.get(key, suffix)
    return names


def group_runs(
    runs: list[RunResult], root: Path, aliases: Mapping[str, str] | None = None
) -> list[Row]:
    """One row per combination of the settings that differ between runs."""
    keys = sorted({override_key(o) for r in runs for o in r.overrides} - {"", *NOT_A_SETTING})
    keys = [k for k in keys if not k.startswith(NOT_A_SETTING_PREFIXES)]
    keys = [k for k in keys if len({r.setting(k) for r in runs}) > 1]  # those that differ
    names = short_names(keys, aliases or {})
    rows: dict[str, Row] = {}
    for run in runs:
        parts = [f"{names[k]}={run.setting(k)}" if names[k] else run.setting(k) for k in keys]
        label = ", ".join(parts) or (run.values.get("name") or root.name)
        rows.setdefault(label, Row(label)).runs.append(run)
    return [rows[label] for label in sorted(rows)]


def collect(
    root: Path,
    numbers_from: NumbersFrom = TEST_STAGE,
    aliases: Mapping[str, str] | None = None,
    include_debug: bool = False,
) -> tuple[list[Row], list[RunResult], list[RunResult]]:
    """(rows of configurations, their runs, the debug runs left out)."""
    if not root.is_dir():
        raise LightsegError(
            f"'{root}' is not a folder. Point it at a folder of runs, e.g. "
            "logs/demo/multiruns/<time>."
        )
    folders = find_runs(root)
    if not folders:
        raise LightsegError(
            f"No runs found under '{root}': a run folder holds .hydra/overrides.yaml or "
            "config.yaml, as `make train` writes them (logs/<name>/runs/<time>/, or "
            "logs/<name>/multiruns/<time>/<n>/ for sweeps)."
        )
    every = [read_run(folder, numbers_from) for folder in folders]
    debug = [] if include_debug else [run for run in every if run.debug]
    runs = [run for run in every if run not in debug]
    if not runs:
        raise LightsegError(
            f"Every run under '{root}' is a debug run (debug=...); include_debug=true "
            "tabulates them."
        )
    return group_runs(runs, root, aliases), runs, debug


def names(value: str | Sequence[str] | None) -> list[str]:
    """A list of names from a config value: ``[a, b]``, ``a``, or ``'a,b'``."""
    items = [value] if isinstance(value, str) else list(value or [])
    return [name.strip() for item in items for name in str(item).split(",") if name.strip()]


def check_types(settings: Mapping[str, Any], **types: type) -> None:
    """Refuse a command-line setting of the wrong type, naming it: ``digits=abc``."""
    for key, kind in types.items():
        value = settings[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            wanted = {bool: "true or false", int: "a whole number"}.get(kind, kind.__name__)
            raise LightsegError(f"{key}={value} is not {wanted}: set {key}=<{wanted}>.")

"""A results table from a folder of runs: ``make table RUNS=logs/demo/multiruns/<time>``.

    python -m lightseg.tools.results RUNS [--metrics test/dice,test/iou] [--digits 3] [--out DIR]

One row per configuration (the overrides that differ between the runs, the seed aside), each
metric as mean ± sample standard deviation over the runs, the best value in bold, and the
number of runs. A run without ``metrics.json`` (failed, interrupted or still running) is
listed under the table with how it ended, and counted in the row's runs column.
Writes ``results.md`` and ``results.tex`` (booktabs) into the folder.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lightseg.errors import LightsegError, user_errors
from lightseg.runs import RunFolder, find_runs
from lightseg.runs.folder import read_yaml
from lightseg.runs.resume import override_key
from lightseg.utils.console import console

DEFAULT_METRICS = ("test/dice", "test/iou")
#: Overrides that do not make a different configuration: replicates, paths, logging, resuming.
NOT_A_SETTING = (
    "seed",
    "data.fold",  # k-fold cross-validation: the folds of one configuration are its replicates
    "ckpt_path",
    "resume",
    "print_config",
    "tags",
    "data.num_workers",
)
NOT_A_SETTING_PREFIXES = ("paths.", "hydra.", "hydra/", "logger", "callbacks.progress_bar")


@dataclass
class Run:
    """One run folder: what it was run with, and its final metrics if it finished."""

    folder: Path
    overrides: list[str]
    values: dict[str, str]  # group choices and resolved config values, flattened
    metrics: dict[str, float] | None
    status: str

    def setting(self, key: str) -> str:
        for override in self.overrides:
            if override_key(override) == key:
                return self.values.get(key, override.split("=", 1)[-1])
        return self.values.get(key, "-")


@dataclass
class Row:
    label: str
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if (r.metrics or {}).get(metric) is not None]

    @property
    def finished(self) -> int:
        return sum(r.metrics is not None for r in self.runs)


def is_setting(key: str) -> bool:
    return key not in NOT_A_SETTING and not key.startswith(NOT_A_SETTING_PREFIXES)


def _flatten(node, prefix: str = "") -> dict[str, str]:
    flat = {}
    if isinstance(node, dict):
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
            if not isinstance(value, dict):
                flat[f"{prefix}{key}"] = str(value)
    return flat


def read_run(run: RunFolder) -> Run:
    config = read_yaml(run.config) or read_yaml(run.hydra / "config.yaml")
    values = _flatten(config or {})
    values.update({key: str(value) for key, value in run.group_choices().items()})
    metrics, status = run.read_metrics(), "finished"
    if metrics is None:
        info = run.info()
        if info is None:
            status = "no metrics.json (never started, or killed before run_info.json)"
        elif info.get("status") in ("finished", "running"):
            status = "no metrics.json (still running, or killed)"
        else:
            status = f"{info.get('status')}: {info.get('message') or ''}".strip(": ")
    return Run(run.path, run.overrides(), values, metrics, status)


def group_runs(runs: list[Run], root: Path) -> list[Row]:
    """One row per combination of the settings that differ between runs."""
    keys = sorted({override_key(o) for r in runs for o in r.overrides} - {""})
    keys = [k for k in keys if is_setting(k) and len({r.setting(k) for r in runs}) > 1]
    rows: dict[str, Row] = {}
    for run in runs:
        label = ", ".join(f"{k}={run.setting(k)}" for k in keys) or (
            run.values.get("name") or root.name
        )
        rows.setdefault(label, Row(label)).runs.append(run)
    return [rows[label] for label in sorted(rows)]


def collect(root: Path) -> tuple[list[Row], list[Run]]:
    if not root.is_dir():
        raise LightsegError(
            f"RUNS='{root}' is not a folder. Point it at a folder of runs, e.g. "
            "logs/demo/multiruns/<time>."
        )
    folders = find_runs(root)
    if not folders:
        raise LightsegError(
            f"No runs found under '{root}': a run folder holds .hydra/overrides.yaml or "
            "config.yaml, as `make train` writes them (logs/<name>/runs/<time>/, or "
            "logs/<name>/multiruns/<time>/<n>/ for sweeps)."
        )
    runs = [read_run(folder) for folder in folders]
    return group_runs(runs, root), runs


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); no deviation from a single value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def best_labels(rows: list[Row], metric: str, digits: int) -> set[str]:
    """Rows whose rounded mean is the best: highest, or lowest for losses."""
    means = {row.label: round(mean_std(v)[0], digits) for row in rows if (v := row.values(metric))}
    if not means:
        return set()
    target = (min if "loss" in metric else max)(means.values())
    return {label for label, mean in means.items() if mean == target}


def cell(values: list[float], digits: int, plus_minus: str) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f}{plus_minus}{std:.{digits}f}"


def runs_cell(row: Row) -> str:
    total = len(row.runs)
    return str(total) if row.finished == total else f"{row.finished}/{total}"


def unfinished(rows: list[Row], root: Path) -> list[str]:
    """One line per run without metrics: folder, configuration, seed, how it ended."""
    return [
        f"{run.folder.relative_to(root)} ({row.label}, seed={run.setting('seed')}): {run.status}"
        for row in rows
        for run in row.runs
        if run.metrics is None
    ]


def markdown(rows: list[Row], runs: list[Run], metrics: list[str], digits: int, root: Path) -> str:
    best = {m: best_labels(rows, m, digits) for m in metrics}
    lines = [
        "| Configuration | " + " | ".join(metrics) + " | Runs |",
        "|---|" + "---:|" * len(metrics) + "---:|",
    ]
    for row in rows:
        cells = []
        for metric in metrics:
            text = cell(row.values(metric), digits, " ± ")
            cells.append(f"**{text}**" if row.label in best[metric] else text)
        lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {runs_cell(row)} |")
    lines += ["", "Mean ± sample standard deviation over runs (seeds); best value in bold."]
    failed = unfinished(rows, root)
    if failed:
        lines += ["", f"Missing or failed runs ({len(failed)} of {len(runs)}):"]
        lines += [f"- {line}" for line in failed]
    return "\n".join(lines) + "\n"


LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\^{}",
}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(char, char) for char in text)


def latex(rows: list[Row], runs: list[Run], metrics: list[str], digits: int, root: Path) -> str:
    best = {m: best_labels(rows, m, digits) for m in metrics}
    lines = [
        f"% Results of {len(runs)} runs under {root} (lightseg: make table); needs booktabs.",
        "% Mean $\\pm$ sample standard deviation over runs (seeds); best value in bold.",
        r"\begin{tabular}{l" + "r" * (len(metrics) + 1) + "}",
        r"\toprule",
        "Configuration & " + " & ".join(latex_escape(m) for m in metrics) + r" & Runs \\",
        r"\midrule",
    ]
    for row in rows:
        cells = []
        for metric in metrics:
            text = cell(row.values(metric), digits, r" $\pm$ ")
            cells.append(rf"\textbf{{{text}}}" if row.label in best[metric] else text)
        cells.append(runs_cell(row))
        lines.append(latex_escape(row.label) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"% missing or failed: {line}" for line in unfinished(rows, root)]
    return "\n".join(lines) + "\n"


def write_tables(
    root: Path, metrics: Sequence[str] = DEFAULT_METRICS, digits: int = 3, out: Path | None = None
) -> tuple[Path, Path]:
    """Collect the runs under ``root`` and write results.md and results.tex (into ``out``)."""
    root = Path(root)
    rows, runs = collect(root)
    available = sorted({k for r in runs if r.metrics for k in r.metrics})
    unknown = [m for m in metrics if m not in available]
    if unknown and available:
        raise LightsegError(
            f"Metric(s) {unknown} are in none of the {len(runs)} runs under '{root}'. "
            f"Available: {', '.join(available)}."
        )
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    md, tex = out / "results.md", out / "results.tex"
    md.write_text(markdown(rows, runs, metrics, digits, root))
    tex.write_text(latex(rows, runs, metrics, digits, root))
    return md, tex


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightseg.tools.results", description=__doc__.split("\n")[0]
    )
    parser.add_argument("runs", type=Path, help="folder holding the runs (searched recursively)")
    parser.add_argument(
        "--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated metric names"
    )
    parser.add_argument("--digits", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: RUNS)")
    args = parser.parse_args(argv)
    with user_errors():
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        md, tex = write_tables(args.runs, metrics, args.digits, args.out)
        console.print(md.read_text(), markup=False, soft_wrap=True)
        console.print(f"Wrote {md} and {tex}")


if __name__ == "__main__":
    main()

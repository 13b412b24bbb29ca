"""A results table from a folder of runs: ``make table RUNS=logs/demo/multiruns/<time>``.

    python -m lightseg.tools.results RUNS [--metrics test/dice,test/iou] [--eval]
        [--label model.arch=arch] [--digits 3] [--resamples 10000] [--seed 0]
        [--include-debug] [--out DIR]

One row per configuration: the settings that differ between the runs (seeds and data splits
are replicates, not settings), labelled by their shortest unambiguous key (``arch=FPN`` for
``model.arch=FPN``) or an alias given with ``--label``. For each metric: the mean ± sample
standard deviation over the runs (best in bold); the mean over test images of each image's
value with a 95 % bootstrap confidence interval; and the p-value of a Wilcoxon signed-rank
test of the per-image values against the best row's on the same images. Values come from each
run's ``metrics.json`` and ``per_image.csv`` (training's test stage), or with ``--eval`` from
its newest ``eval/<split>_<time>/`` (``make eval``: native resolution, TTA). Failed, missing
and debug runs are listed under the table. Writes ``results.md`` and ``results.tex``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hydra.utils import get_class

from lightseg.errors import LightsegError, user_errors
from lightseg.runs import RunFolder, find_runs
from lightseg.runs.folder import PER_IMAGE, read_yaml
from lightseg.runs.resume import override_key
from lightseg.tools.stats import LEVEL, RESAMPLES, SEED, bootstrap_ci, paired_p
from lightseg.utils.console import console

DEFAULT_METRICS = ("test/dice", "test/iou")
#: Overrides that do not make a different configuration: replicates (seeds, data splits, the
#: folds of k-fold cross-validation), paths, logging, resuming.
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
#: Metric names that are lower-is-better whatever their class says (the loss terms).
LOSS = "loss"


@dataclass(frozen=True)
class Source:
    """Where a run's numbers are read from: training's test stage, or ``make eval``."""

    eval: bool = False
    split: str = "test"
    variant: str | None = None  # eval only; default: the last one (what eval ranked)

    def describe(self) -> str:
        if not self.eval:
            return "metrics.json and per_image.csv of training (test stage, training size)"
        variant = f"variant {self.variant}" if self.variant else "its last variant"
        return f"eval.json and per_image.csv of make eval ({self.split} split, {variant})"


@dataclass
class Run:
    """One run folder: what it was run with, and its final metrics if it finished."""

    folder: Path
    overrides: list[str]
    values: dict[str, str]  # group choices and resolved config values, flattened
    metrics: dict[str, float | None] | None
    status: str
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)  # metric -> id -> v

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
    runs: list[Run] = field(default_factory=list)

    def values(self, metric: str) -> list[float]:
        return [r.metrics[metric] for r in self.runs if (r.metrics or {}).get(metric) is not None]

    @property
    def finished(self) -> int:
        return sum(r.metrics is not None for r in self.runs)

    def tested(self, metric: str) -> set[str]:
        """The ids of the images the row's runs scored (with or without a value)."""
        return {i for r in self.runs for i in r.per_image.get(metric, {})}

    def images(self, metric: str) -> dict[str, float]:
        """Each image's value, averaged over the runs that scored it (seeds, or data splits
        that share images); images without a value are left out."""
        scores: dict[str, list[float]] = {}
        for run in self.runs:
            for image, value in run.per_image.get(metric, {}).items():
                if not math.isnan(value):
                    scores.setdefault(image, []).append(value)
        return {image: statistics.fmean(v) for image, v in sorted(scores.items())}


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


def read_per_image(path: Path, prefix: str, variant: str | None = None) -> dict:
    """``{<prefix><metric>: {image id: value}}`` from a per_image.csv (NaN: no value)."""
    if not path.is_file():
        return {}
    out: dict[str, dict[str, float]] = {}
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            if variant is not None and row.get("variant", variant) != variant:
                continue
            for name, text in row.items():
                if name not in ("id", "variant"):
                    value = float(text) if text else math.nan
                    out.setdefault(f"{prefix}{name}", {})[row["id"]] = value
    return out


def eval_results(run: RunFolder, source: Source) -> tuple[dict | None, dict, str | None]:
    """(the newest ``make eval`` of the split, its per-image values, why there are none)."""
    reports = sorted(run.evaluations.glob(f"{source.split}_*/eval.json"))
    if not reports:
        missing = f"no eval/{source.split}_*/eval.json (make eval CKPT=<run>/checkpoints/best.ckpt)"
        return None, {}, missing
    try:
        report = json.loads(reports[-1].read_text())
        variant = source.variant or report["examples_from"]
        metrics = report["metrics"][variant]
    except (OSError, ValueError, KeyError):
        return None, {}, f"{reports[-1]} has no metrics for variant {source.variant}"
    prefix = f"{source.split}/"
    per_image = read_per_image(reports[-1].parent / PER_IMAGE, prefix, variant)
    return {f"{prefix}{k}": v for k, v in metrics.items()}, per_image, None


def read_run(run: RunFolder, source: Source = Source()) -> Run:
    config = read_yaml(run.config) or read_yaml(run.hydra_config)
    values = _flatten(config or {})
    values.update({key: str(value) for key, value in run.group_choices().items()})
    trained = run.read_metrics()
    if source.eval:
        metrics, per_image, missing = eval_results(run, source)
    else:
        metrics, per_image, missing = trained, read_per_image(run.per_image, "test/"), None
    status = "finished"
    if missing and trained is not None:
        status = missing
    elif metrics is None:
        info = run.info()
        if info is None:
            status = "no metrics.json (never started, or killed before run_info.json)"
        elif info.get("status") in ("finished", "running"):
            status = "no metrics.json (still running, or killed)"
        else:
            status = f"{info.get('status')}: {info.get('message') or ''}".strip(": ")
    return Run(run.path, run.overrides(), values, metrics, status, per_image)


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


def group_runs(runs: list[Run], root: Path, aliases: Mapping[str, str] | None = None) -> list[Row]:
    """One row per combination of the settings that differ between runs."""
    keys = sorted({override_key(o) for r in runs for o in r.overrides} - {""})
    keys = [k for k in keys if is_setting(k) and len({r.setting(k) for r in runs}) > 1]
    names = short_names(keys, aliases or {})
    rows: dict[str, Row] = {}
    for run in runs:
        parts = [f"{names[k]}={run.setting(k)}" if names[k] else run.setting(k) for k in keys]
        label = ", ".join(parts) or (run.values.get("name") or root.name)
        rows.setdefault(label, Row(label)).runs.append(run)
    return [rows[label] for label in sorted(rows)]


def collect(
    root: Path,
    source: Source = Source(),
    aliases: Mapping[str, str] | None = None,
    include_debug: bool = False,
) -> tuple[list[Row], list[Run], list[Run]]:
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
    every = [read_run(folder, source) for folder in folders]
    debug = [] if include_debug else [run for run in every if run.debug]
    runs = [run for run in every if run not in debug]
    if not runs:
        raise LightsegError(
            f"Every run under '{root}' is a debug run (debug=...); --include-debug tabulates them."
        )
    return group_runs(runs, root, aliases), runs, debug


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); no deviation from a single value."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def lower_is_better(metric: str, runs: list[Run]) -> bool:
    """Losses, and metrics whose class says ``higher_is_better = False`` (HD95, ASSD)."""
    name = metric.split("/", 1)[-1]
    if LOSS in name:
        return True
    for run in runs:
        targets = {
            key[len("metrics.") : -len("._target_")]: target
            for key, target in run.values.items()
            if key.startswith("metrics.") and key.endswith("._target_")
        }
        keys = [k for k in targets if name == k or name.startswith(f"{k}_")]
        if keys:
            try:
                return get_class(targets[max(keys, key=len)]).higher_is_better is False
            except (ImportError, AttributeError, ValueError):
                return False
    return False


@dataclass
class Cell:
    """One configuration's numbers for one metric."""

    runs: list[float]
    images: dict[str, float]
    ci: tuple[float, float] | None = None
    p: float | None = None
    p_text: str = "-"  # "best", "n/a", or the formatted p-value

    @property
    def image_mean(self) -> float | None:
        return statistics.fmean(self.images.values()) if self.images else None


@dataclass
class Results:
    """Everything a table shows: rows, one Cell per row and metric, bold cells, notes."""

    rows: list[Row]
    metrics: list[str]
    cells: dict[tuple[str, str], Cell]
    best: dict[str, set[str]]
    notes: list[str]
    caption: str
    runs: int


def compare(
    rows: list[Row],
    runs: list[Run],
    metrics: list[str],
    digits: int,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[dict[tuple[str, str], Cell], dict[str, set[str]], list[str]]:
    """Per metric: each row's cell, the bold rows, and notes on what could not be computed."""
    cells, best, notes = {}, {}, []
    for metric in metrics:
        lower = lower_is_better(metric, runs)
        for row in rows:
            images = row.images(metric)
            ci = bootstrap_ci(list(images.values()), resamples, seed)
            cells[metric, row.label] = Cell(row.values(metric), images, ci)
        means = {r.label: mean_std(v)[0] for r in rows if (v := cells[metric, r.label].runs)}
        if not means:
            best[metric] = set()
            continue
        target = (min if lower else max)(means.values())
        best[metric] = {k for k, m in means.items() if round(m, digits) == round(target, digits)}
        reference = next(r for r in rows if means.get(r.label) == target)
        notes += paired_tests(metric, rows, reference, cells)
    return cells, best, notes


def paired_tests(metric: str, rows: list[Row], reference: Row, cells) -> list[str]:
    """Fill in each row's p-value against ``reference``; notes on rows that cannot be paired."""
    notes = []
    base = cells[metric, reference.label]
    if not base.images:
        if any(cells[metric, row.label].images for row in rows):
            return [f"{metric}: the best row ({reference.label}) has no per-image values: no p."]
        return []
    cells[metric, reference.label].p_text = "best"
    for row in rows:
        cell = cells[metric, row.label]
        if row is reference or not cell.images:
            continue
        if row.tested(metric) != reference.tested(metric):
            cell.p_text = "n/a"
            notes.append(
                f"{metric}: {row.label} was tested on other images than the best row "
                f"({reference.label}): not paired, no p."
            )
            continue
        shared = [i for i in cell.images if i in base.images]
        cell.p = paired_p([cell.images[i] for i in shared], [base.images[i] for i in shared])
        cell.p_text = "<0.001" if cell.p < 0.001 else f"{cell.p:.3f}"
    return notes


def results(
    root: Path,
    metrics: Sequence[str] = DEFAULT_METRICS,
    digits: int = 3,
    source: Source = Source(),
    aliases: Mapping[str, str] | None = None,
    include_debug: bool = False,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Results:
    """Collect the runs under ``root`` and compute what the table shows."""
    root = Path(root)
    rows, runs, debug = collect(root, source, aliases, include_debug)
    available = sorted({k for r in runs if r.metrics for k in r.metrics})
    unknown = [m for m in metrics if m not in available]
    if unknown and available:
        raise LightsegError(
            f"Metric(s) {unknown} are in none of the {len(runs)} runs under '{root}' "
            f"({source.describe()}). Available: {', '.join(available)}."
        )
    metrics = list(metrics)
    cells, best, notes = compare(rows, runs, metrics, digits, resamples, seed)
    notes = [*missing_notes(rows, metrics, root), *notes]
    single = [row.label for row in rows if row.finished == 1]
    if single:
        notes.append(
            f"One run only (no standard deviation over runs; the CI is over test images "
            f"alone): {'; '.join(single)}."
        )
    failed = unfinished(rows, root)
    if failed:
        notes.append(f"Missing or failed runs ({len(failed)} of {len(runs)}):")
        notes += [f"  - {line}" for line in failed]
    if debug:
        notes.append(f"Debug runs left out ({len(debug)}; --include-debug keeps them):")
        notes += [f"  - {run.folder.relative_to(root)} (debug={run.debug})" for run in debug]
    return Results(rows, metrics, cells, best, notes, caption(source, resamples, seed), len(runs))


def missing_notes(rows: list[Row], metrics: list[str], root: Path) -> list[str]:
    """Finished runs without a metric, and finished runs without per-image values."""
    notes = []
    done = [run for row in rows for run in row.runs if run.metrics is not None]
    for metric in metrics:
        lacking = [r for r in done if r.metrics.get(metric) is None]
        if lacking:
            folders = ", ".join(str(r.folder.relative_to(root)) for r in lacking)
            notes.append(f"{metric}: no value in {len(lacking)} of {len(done)} runs ({folders}).")
        no_images = [r for r in done if metric not in r.per_image]
        if no_images and len(no_images) == len(done):
            notes.append(f"{metric}: no per-image values in any run: no CI, no p.")
        elif no_images:
            folders = ", ".join(str(r.folder.relative_to(root)) for r in no_images)
            notes.append(
                f"{metric}: no per-image values ({PER_IMAGE}) in {len(no_images)} of "
                f"{len(done)} runs ({folders}): the CI and p use the others."
            )
    return notes


def caption(source: Source, resamples: int, seed: int) -> str:
    return (
        "Mean ± sample standard deviation over runs (seeds, data splits); best mean in bold "
        "(lowest for losses and distances). Per image: the mean over test images of each "
        "image's value (an image scored by several runs of a configuration counts once, with "
        f"its mean over them) and its {LEVEL:.0%} percentile bootstrap confidence interval "
        f"({resamples} resamples of the images, seed {seed}). p: two-sided Wilcoxon "
        "signed-rank test (scipy.stats.wilcoxon) of the per-image values against the best "
        f"row's on the same images. From {source.describe()}."
    )


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


def mean_text(values: list[float], digits: int, plus_minus: str) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f}{plus_minus}{std:.{digits}f}"


def image_text(cell: Cell, digits: int) -> str:
    """``mean [low, high]`` of the per-image values; ``-`` without any."""
    mean = cell.image_mean
    if mean is None:
        return "-"
    if cell.ci is None:
        return f"{mean:.{digits}f}"
    low, high = cell.ci
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def markdown(table: Results, digits: int) -> str:
    header = [f"{m} | per image [95% CI] | p" for m in table.metrics]
    lines = [
        "| Configuration | " + " | ".join(header) + " | Runs |",
        "|---|" + "---:|---:|---:|" * len(table.metrics) + "---:|",
    ]
    for row in table.rows:
        cells = []
        for metric in table.metrics:
            cell = table.cells[metric, row.label]
            text = mean_text(cell.runs, digits, " ± ")
            cells += [
                f"**{text}**" if row.label in table.best[metric] else text,
                image_text(cell, digits),
                cell.p_text,
            ]
        lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {runs_cell(row)} |")
    lines += ["", table.caption]
    if table.notes:  # sub-items (a note's list) are indented already
        lines += ["", *(n if n.startswith("  - ") else f"- {n}" for n in table.notes)]
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


def latex(table: Results, digits: int, root: Path) -> str:
    count = len(table.metrics)
    caption = latex_escape(table.caption).replace("±", r"$\pm$")
    lines = [
        f"% Results of {table.runs} runs under {root} (lightseg: make table); needs booktabs.",
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "rrr" * count + "r}",
        r"\toprule",
        " & ".join(
            ["", *(rf"\multicolumn{{3}}{{c}}{{{latex_escape(m)}}}" for m in table.metrics), ""]
        )
        + r" \\",
        "".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(count)),
        "Configuration & "
        + " & ".join([r"mean $\pm$ std & per image [95\% CI] & $p$"] * count)
        + r" & Runs \\",
        r"\midrule",
    ]
    for row in table.rows:
        cells = []
        for metric in table.metrics:
            cell = table.cells[metric, row.label]
            text = mean_text(cell.runs, digits, r" $\pm$ ")
            cells += [
                rf"\textbf{{{text}}}" if row.label in table.best[metric] else text,
                image_text(cell, digits),
                latex_escape(cell.p_text).replace("<", r"$<$"),
            ]
        cells.append(runs_cell(row))
        lines.append(latex_escape(row.label) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    lines += [f"% {note}" for note in table.notes]
    return "\n".join(lines) + "\n"


def write_tables(
    root: Path,
    metrics: Sequence[str] = DEFAULT_METRICS,
    digits: int = 3,
    out: Path | None = None,
    **options,
) -> tuple[Path, Path]:
    """Collect the runs under ``root`` and write results.md and results.tex (into ``out``).

    ``options``: ``source``, ``aliases``, ``include_debug``, ``resamples``, ``seed`` (see
    :func:`results`).
    """
    table = results(Path(root), metrics, digits, **options)
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    md, tex = out / "results.md", out / "results.tex"
    md.write_text(markdown(table, digits))
    tex.write_text(latex(table, digits, Path(root)))
    return md, tex


def parse_aliases(pairs: Sequence[str]) -> dict[str, str]:
    """``--label model.arch=arch`` -> ``{"model.arch": "arch"}`` (an empty alias: value only)."""
    aliases = {}
    for pair in pairs:
        key, sep, alias = pair.partition("=")
        if not sep or not key:
            raise LightsegError(f"--label {pair}: write key=alias, e.g. --label model.arch=arch.")
        aliases[key] = alias
    return aliases


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightseg.tools.results", description=__doc__.split("\n")[0]
    )
    parser.add_argument("runs", type=Path, help="folder holding the runs (searched recursively)")
    parser.add_argument(
        "--metrics", default=",".join(DEFAULT_METRICS), help="comma-separated metric names"
    )
    parser.add_argument(
        "--eval", action="store_true", help="read each run's newest make eval, not training's"
    )
    parser.add_argument("--split", default="test", help="with --eval: the split evaluated")
    parser.add_argument("--variant", default=None, help="with --eval: plain, tta, ...")
    parser.add_argument(
        "--label", action="append", default=[], metavar="KEY=ALIAS", help="row label of a key"
    )
    parser.add_argument("--digits", type=int, default=3)
    parser.add_argument("--resamples", type=int, default=RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=SEED, help="bootstrap seed")
    parser.add_argument("--include-debug", action="store_true", help="keep debug=... runs")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: RUNS)")
    args = parser.parse_args(argv)
    with user_errors():
        metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
        source = Source(args.eval, args.split, args.variant)
        md, tex = write_tables(
            args.runs,
            metrics,
            args.digits,
            args.out,
            source=source,
            aliases=parse_aliases(args.label),
            include_debug=args.include_debug,
            resamples=args.resamples,
            seed=args.seed,
        )
        console.print(md.read_text(), markup=False, soft_wrap=True)
        console.print(f"Wrote {md} and {tex}")


if __name__ == "__main__":
    main()

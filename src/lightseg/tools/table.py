"""A results table from a folder of runs: ``make table RUNS=logs/demo/multiruns/<time>``
(settings: configs/table.yaml).

One row per configuration (:mod:`lightseg.tools.results`). For each metric: the mean ± sample
standard deviation over the runs (best in bold); the mean over test images with a 95 % bootstrap
confidence interval; and the p-value of a Wilcoxon signed-rank test against the best row on the
same images. ``eval=true`` reads each run's newest ``make eval`` instead of its test stage.
Failed, missing and debug runs are listed under the table. Writes ``results.md`` and
``results.tex``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig

from lightseg.config import app
from lightseg.errors import LightsegError
from lightseg.runs.folder import PER_IMAGE
from lightseg.tools.results import (
    TEST_STAGE,
    NumbersFrom,
    Row,
    RunResult,
    check_types,
    collect,
    names,
)
from lightseg.tools.significance import LEVEL, RESAMPLES, SEED, bootstrap_ci, paired_p
from lightseg.utils.console import console

DEFAULT_METRICS = ("test/dice", "test/iou")


def lower_is_better(metric: str, runs: list[RunResult]) -> bool:
    """Losses, failure shares, and metrics whose class says ``higher_is_better = False``."""
    name = metric.split("/", 1)[-1]
    if "loss" in name or name.startswith("failure_rate/"):  # whatever its metric's class says
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
    bold: bool = False  # the best mean over runs (or as good at the table's digits)

    @property
    def image_mean(self) -> float | None:
        return statistics.fmean(self.images.values()) if self.images else None


@dataclass
class Results:
    """Everything a table shows: rows, one Cell per metric and row, notes."""

    rows: list[Row]
    metrics: list[str]
    cells: dict[tuple[str, str], Cell]
    notes: list[str]
    caption: str
    runs: int


def compare(
    rows: list[Row],
    runs: list[RunResult],
    metrics: list[str],
    digits: int,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[dict[tuple[str, str], Cell], list[str]]:
    """Per metric and row: a cell (bold if best); and notes on what could not be computed."""
    cells, notes = {}, []
    for metric in metrics:
        lower = lower_is_better(metric, runs)
        for row in rows:
            images = row.images(metric)
            ci = bootstrap_ci(list(images.values()), resamples, seed)
            cells[metric, row.label] = Cell(row.values(metric), images, ci)
        means = {r.label: statistics.fmean(v) for r in rows if (v := cells[metric, r.label].runs)}
        if means:
            target = (min if lower else max)(means.values())
            for label, mean in means.items():
                cells[metric, label].bold = round(mean, digits) == round(target, digits)
            reference = next(r for r in rows if means.get(r.label) == target)
            notes += paired_tests(metric, rows, reference, cells)
    return cells, notes


def paired_tests(metric: str, rows: list[Row], reference: Row, cells) -> list[str]:
    """Fill in each row's p-value against ``reference``; notes on rows that cannot be paired."""
    base = cells[metric, reference.label]
    if not base.images:
        if any(cells[metric, row.label].images for row in rows):
            return [f"{metric}: the best row ({reference.label}) has no per-image values: no p."]
        return []
    base.p_text = "best"
    notes = []
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
    numbers_from: NumbersFrom = TEST_STAGE,
    aliases: Mapping[str, str] | None = None,
    include_debug: bool = False,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> Results:
    """Collect the runs under ``root`` and compute what the table shows."""
    root = Path(root)
    rows, runs, debug = collect(root, numbers_from, aliases, include_debug)
    available = sorted({k for r in runs if r.metrics for k in r.metrics})
    unknown = [m for m in metrics if m not in available]
    if unknown and available:
        raise LightsegError(
            f"Metric(s) {unknown} are in none of the {len(runs)} runs under '{root}' "
            f"({numbers_from.describe()}). Available: {', '.join(available)}."
        )
    metrics = list(metrics)
    cells, notes = compare(rows, runs, metrics, digits, resamples, seed)
    notes = [*missing_notes(rows, metrics, root), *notes]
    single = [row.label for row in rows if row.finished == 1]
    if single:
        notes.append(
            f"One run only (no standard deviation over runs; the CI is over test images "
            f"alone): {'; '.join(single)}."
        )
    failed = [
        f"{run.folder.relative_to(root)} ({row.label}, seed={run.setting('seed')}): {run.status}"
        for row in rows
        for run in row.runs
        if run.metrics is None
    ]
    if failed:
        notes.append(f"Missing or failed runs ({len(failed)} of {len(runs)}):")
        notes += [f"  - {line}" for line in failed]
    if debug:
        notes.append(f"Debug runs left out ({len(debug)}; include_debug=true keeps them):")
        notes += [f"  - {run.folder.relative_to(root)} (debug={run.debug})" for run in debug]
    return Results(rows, metrics, cells, notes, caption(numbers_from, resamples, seed), len(runs))


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


def caption(numbers_from: NumbersFrom, resamples: int, seed: int) -> str:
    return (
        "Mean ± sample standard deviation over runs (seeds, data splits); best mean in bold "
        "(lowest for losses and distances). Per image: the mean over test images of each "
        "image's value (an image scored by several runs of a configuration counts once, with "
        f"its mean over them) and its {LEVEL:.0%} percentile bootstrap confidence interval "
        f"({resamples} resamples of the images, seed {seed}). p: two-sided Wilcoxon "
        "signed-rank test (scipy.stats.wilcoxon) of the per-image values against the best "
        f"row's on the same images. From {numbers_from.describe()}."
    )


def mean_text(values: list[float], digits: int, plus_minus: str) -> str:
    """Mean and sample standard deviation (n - 1); no deviation from a single value."""
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "-"
    std = statistics.stdev(values)
    return f"{statistics.fmean(values):.{digits}f}{plus_minus}{std:.{digits}f}"


def row_cells(table: Results, row: Row, digits: int, plus_minus: str, bold: str, less: str) -> list:
    """Per metric: the mean ± std over runs (``bold`` if best), the per-image mean [CI] (``-``
    without values) and p (its ``<`` written ``less``); then the run count (``finished/total``)."""
    cells = []
    for metric in table.metrics:
        cell = table.cells[metric, row.label]
        text = mean_text(cell.runs, digits, plus_minus)
        ci = f" [{cell.ci[0]:.{digits}f}, {cell.ci[1]:.{digits}f}]" if cell.ci else ""
        image = "-" if cell.image_mean is None else f"{cell.image_mean:.{digits}f}{ci}"
        cells += [bold.format(text) if cell.bold else text, image, cell.p_text.replace("<", less)]
    total = len(row.runs)
    return [*cells, str(total) if row.finished == total else f"{row.finished}/{total}"]


def markdown(table: Results, digits: int) -> str:
    header = [f"{m} | per image [95% CI] | p" for m in table.metrics]
    lines = [
        "| Configuration | " + " | ".join(header) + " | Runs |",
        "|---|" + "---:|---:|---:|" * len(table.metrics) + "---:|",
    ]
    for row in table.rows:
        cells = row_cells(table, row, digits, " ± ", "**{}**", "<")
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    lines += ["", table.caption]
    if table.notes:  # sub-items (a note's list) are indented already
        lines += ["", *(n if n.startswith("  - ") else f"- {n}" for n in table.notes)]
    return "\n".join(lines) + "\n"


#: ``text.translate(LATEX_ESCAPES)``: LaTeX's special characters as text.
LATEX_ESCAPES = str.maketrans(
    {char: "\\" + char for char in "&%$#_{}"}
    | {"\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\^{}"}
)


def latex(table: Results, digits: int, root: Path) -> str:
    count = len(table.metrics)
    caption = table.caption.translate(LATEX_ESCAPES).replace("±", r"$\pm$")
    heads = [rf"\multicolumn{{3}}{{c}}{{{m.translate(LATEX_ESCAPES)}}}" for m in table.metrics]
    lines = [
        f"% Results of {table.runs} runs under {root} (lightseg: make table); needs booktabs.",
        r"\begin{table}[t]",
        r"\centering",
        r"\begin{tabular}{l" + "rrr" * count + "r}",
        r"\toprule",
        " & ".join(["", *heads, ""]) + r" \\",
        "".join(rf"\cmidrule(lr){{{2 + 3 * i}-{4 + 3 * i}}}" for i in range(count)),
        "Configuration & "
        + " & ".join([r"mean $\pm$ std & per image [95\% CI] & $p$"] * count)
        + r" & Runs \\",
        r"\midrule",
    ]
    for row in table.rows:
        cells = row_cells(table, row, digits, r" $\pm$ ", r"\textbf{{{}}}", "$<$")
        lines.append(row.label.translate(LATEX_ESCAPES) + " & " + " & ".join(cells) + r" \\")
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
    """Write results.md and results.tex of the runs under ``root`` (into ``out``)."""
    table = results(Path(root), metrics, digits, **options)
    out = Path(out or root)
    out.mkdir(parents=True, exist_ok=True)
    md, tex = out / "results.md", out / "results.tex"
    md.write_text(markdown(table, digits))
    tex.write_text(latex(table, digits, Path(root)))
    return md, tex


@app("table")
def main(cfg: DictConfig) -> None:
    check_types(cfg, eval=bool, include_debug=bool, digits=int, resamples=int, seed=int)
    md, tex = write_tables(
        cfg.runs,
        names(cfg.columns),
        cfg.digits,
        cfg.out,
        numbers_from=NumbersFrom(cfg.eval, cfg.split, cfg.variant),
        aliases=dict(cfg.labels or {}),
        include_debug=cfg.include_debug,
        resamples=cfg.resamples,
        seed=cfg.seed,
    )
    console.print(md.read_text(), markup=False, soft_wrap=True)
    console.print(f"Wrote {md} and {tex}")


if __name__ == "__main__":
    main()

"""A results table from a folder of runs: ``make table RUNS=logs/demo/multiruns/<time>``
(configs/table.yaml; README "Results tables"), written to ``results.md`` and ``results.tex``.

One row per configuration (:mod:`lightseg.tools.results`). Per metric: the mean ± std over runs,
then the per-image statistic [CI] and p (MDD) of :mod:`lightseg.tools.comparison`. Missing,
failed and debug runs, and rows that could not be compared, are noted under it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from omegaconf import DictConfig

from lightseg.config import app
from lightseg.errors import LightsegError
from lightseg.runs.folder import PER_IMAGE
from lightseg.runs.protocol import describe
from lightseg.tools.comparison import Cell, Statistics, compare
from lightseg.tools.results import (
    TEST_STAGE,
    NumbersFrom,
    Row,
    RunResult,
    check_types,
    collect,
    names,
    published_rows,
)
from lightseg.tools.significance import LEVEL
from lightseg.utils.console import console

DEFAULT_METRICS = ("test/dice", "test/iou")


@dataclass
class Results:
    """Everything a table shows (a Cell per metric and row); with ``by``, one per slice too."""

    rows: list[Row]
    metrics: list[str]
    cells: dict[tuple[str, str], Cell]
    notes: list[str]
    caption: str
    runs: int
    title: str = ""
    slices: list[Results] = field(default_factory=list)


def results(
    root: Path,
    metrics: Sequence[str] = DEFAULT_METRICS,
    digits: int = 3,
    numbers_from: NumbersFrom = TEST_STAGE,
    aliases: Mapping[str, str] | None = None,
    include_debug: bool = False,
    by: str | None = None,
    min_images: int = 10,
    published: str | Path | None = None,
    **statistics_options,
) -> Results:
    """Collect the runs under ``root`` and compute what the table shows (``by="stratum"``: and
    one table per stratum of the test images; ``published``: a YAML of published numbers, shown
    as rows of their own, never paired; ``statistics_options``: :class:`Statistics`' fields)."""
    root = Path(root)
    if by not in (None, "stratum"):
        raise LightsegError(
            f"by={by} is not a way to slice a table: use --by stratum (by=stratum), or leave "
            "it out for one table."
        )
    stats = Statistics(**statistics_options)
    rows, runs, debug = collect(root, numbers_from, aliases, include_debug)
    available = sorted({k for r in runs if r.metrics for k in r.metrics})
    unknown = [m for m in metrics if m not in available]
    if unknown and available:
        raise LightsegError(
            f"Metric(s) {unknown} are in none of the {len(runs)} runs under '{root}' "
            f"({numbers_from.describe()}). Available: {', '.join(available)}."
        )
    metrics = list(metrics)
    cells, notes, sentence = compare(rows, metrics, digits, stats)
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
    extra = published_rows(published)
    for row in extra:
        for metric in metrics:
            cells[metric, row.label] = Cell(row.values(metric), {}, p_text="published")
    text = caption(numbers_from, sentence, stats.hierarchical(rows, metrics), stats)
    text = f"{text} {protocols_sentence(rows, extra)}"
    table = Results(rows + extra, metrics, cells, notes, text, len(runs))
    if by:
        table.slices = by_stratum(rows, metrics, digits, stats, root, min_images)
    return table


def protocols_sentence(rows: list[Row], published: list[Row]) -> str:
    """Each row's protocol (its card, lightseg.runs.protocol) in a few words; published rows
    with their source."""
    texts: dict[str, list[str]] = {}  # protocol -> its rows
    for row in rows:
        texts.setdefault(row.protocol_text(), []).append(row.label)
    if len(texts) == 1:
        sentence = f"Protocol of every row: {next(iter(texts))}."
    else:
        sentence = (
            "Protocols (rows are paired and bold marks the best only among rows scored alike): "
            + "; ".join(f"{text} ({'; '.join(labels)})" for text, labels in texts.items())
            + "."
        )
    for row in published:
        run = row.runs[0]
        sentence += (
            f" {row.label}: from {run.published}, {describe(run.protocol)}; shown, never paired."
        )
    return sentence


def by_stratum(
    rows: list[Row], metrics: list[str], digits: int, stats: Statistics, root: Path, min_images: int
) -> list[Results]:
    """One table per stratum: each run's per-image values of the stratum's images, its mean
    over them as the run's number; compared as the whole table is."""
    runs = [run for row in rows for run in row.runs]
    for run in runs:
        if run.per_image and run.strata is None:
            raise LightsegError(
                f"--by stratum: '{run.per_image_file}' of run '{run.folder}' has no 'stratum' "
                "column (it was written before lightseg recorded each image's stratum). Re-run "
                f"make eval CKPT={run.folder}/checkpoints/best.ckpt for each such run and make "
                'the table from those evaluations: ARGS="eval=true --by stratum".'
            )
    strata = {i: s or "(none)" for run in runs for i, s in (run.strata or {}).items()}
    if not strata:
        raise LightsegError(
            f"--by stratum: no run under '{root}' has per-image values ({PER_IMAGE}), so no "
            "image has a stratum. Finish the runs' test stage, or make eval them and add eval=true."
        )
    tables = []
    for name in sorted(set(strata.values())):
        ids = {i for i, s in strata.items() if s == name}
        sliced = [
            Row(row.label, [restricted(run, ids, metrics) for run in row.runs]) for row in rows
        ]
        cells, notes, sentence = compare(sliced, metrics, digits, stats)
        title = f"stratum = {name} ({len(ids)} test images)"
        if len(ids) < min_images:
            title += f": fewer than min_images={min_images}, too few to read"
        text = (
            f"Test images of stratum {name} only. Mean ± std over runs of each run's mean over "
            f"these images; per image [95% CI] and p as in the whole table. {sentence}"
        )
        tables.append(Results(sliced, metrics, cells, notes, text, len(runs), title))
    return tables


def restricted(run: RunResult, ids: set[str], metrics: list[str]) -> RunResult:
    """``run`` with the per-image values of ``ids`` only, and their means as its metrics."""
    per_image = {m: {i: v for i, v in vs.items() if i in ids} for m, vs in run.per_image.items()}
    if run.metrics is None:
        return replace(run, per_image=per_image)
    kept = {m: [v for v in per_image.get(m, {}).values() if not math.isnan(v)] for m in metrics}
    means = {m: statistics.fmean(values) if values else None for m, values in kept.items()}
    return replace(run, per_image=per_image, metrics=means)


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


def caption(numbers_from: NumbersFrom, sentence: str, hierarchical: bool, stats) -> str:
    if hierarchical:
        per_image = (
            "Per image: the mean over runs of each run's mean over its test images, bold for "
            f"the best, and its {LEVEL:.0%} two-level percentile bootstrap confidence interval "
            "(runs resampled, and within them images)."
        )
    else:
        per_image = (
            "Per image: the mean over test images of each image's value (an image scored by "
            "several runs of a configuration counts once, with its mean over them), bold for "
            f"the best, and its {LEVEL:.0%} percentile bootstrap confidence interval "
            f"({stats.resamples} resamples of the images, seed {stats.seed})."
        )
    return (
        "Mean ± sample standard deviation over runs (seeds, data splits); bold for the best "
        "mean where there are no per-image values (lowest for losses and distances). "
        f"{per_image} {sentence} From {numbers_from.describe()}."
    ).replace("  ", " ")


def mean_text(values: list[float], digits: int, plus_minus: str) -> str:
    """Mean and sample standard deviation (n - 1); no deviation from a single value."""
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "-"
    std = statistics.stdev(values)
    return f"{statistics.fmean(values):.{digits}f}{plus_minus}{std:.{digits}f}"


def row_cells(table: Results, row: Row, digits: int, plus_minus: str, bold: str, less: str) -> list:
    """Per metric: the mean ± std over runs, the per-image value [CI] (``-`` without values;
    ``bold`` on the best value, or on the best mean without one) and p (MDD) (its ``<`` written
    ``less``); then the run count (``finished/total``)."""
    cells = []
    for metric in table.metrics:
        cell = table.cells[metric, row.label]
        text = mean_text(cell.runs, digits, plus_minus)
        ci = f" [{cell.ci[0]:.{digits}f}, {cell.ci[1]:.{digits}f}]" if cell.ci else ""
        image = "-" if cell.value is None else f"{cell.value:.{digits}f}{ci}"
        on_images = cell.value is not None
        text = bold.format(text) if cell.bold and not on_images else text
        image = bold.format(image) if cell.bold and on_images else image
        cells += [text, image, cell.p_text.replace("<", less)]
    total = len(row.runs)
    return [*cells, str(total) if row.finished == total else f"{row.finished}/{total}"]


def markdown(table: Results, digits: int) -> str:
    """The table, its caption and notes; then each slice's under a heading."""
    header = [f"{m} | per image [95% CI] | p (MDD)" for m in table.metrics]
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
    for part in table.slices:
        lines += ["", f"### {part.title}", "", markdown(part, digits).rstrip("\n")]
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
        + " & ".join([r"mean $\pm$ std & per image [95\% CI] & $p$ (MDD)"] * count)
        + r" & Runs \\",
        r"\midrule",
    ]
    for row in table.rows:
        cells = row_cells(table, row, digits, r" $\pm$ ", r"\textbf{{{}}}", "$<$")
        lines.append(row.label.translate(LATEX_ESCAPES) + " & " + " & ".join(cells) + r" \\")
    if table.title:
        caption = f"{table.title.translate(LATEX_ESCAPES)}. {caption}"
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    lines += [f"% {note}" for note in table.notes]
    lines += [latex(part, digits, root).rstrip("\n") for part in table.slices]
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
    check_types(
        cfg, eval=bool, include_debug=bool, digits=int, resamples=int, seed=int, min_images=int
    )
    options = ("include_debug", "resamples", "seed", "test", "alpha", "power", "by", "min_images")
    md, tex = write_tables(
        cfg.runs,
        names(cfg.columns),
        cfg.digits,
        cfg.out,
        numbers_from=NumbersFrom(cfg.eval, cfg.split, cfg.variant),
        aliases=dict(cfg.labels or {}),
        published=cfg.published,
        **{key: cfg[key] for key in options},
    )
    console.print(md.read_text(), markup=False, soft_wrap=True)
    console.print(f"Wrote {md} and {tex}")


if __name__ == "__main__":
    main()

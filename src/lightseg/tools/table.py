"""A results table from a folder of runs: ``make table RUNS=logs/demo/multiruns/<time>``
(configs/table.yaml; README "Results tables"), written to ``results.md`` and ``results.tex``.

One row per configuration (:mod:`lightseg.tools.results`). Per metric: the mean ± std over runs;
the per-image statistic with its bootstrap CI; and the p-value and minimal detectable difference
against the best row scored alike (their protocol cards agree, :mod:`lightseg.runs.protocol`).
Missing, failed and debug runs, and rows that could not be compared, are noted under it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig

from lightseg.config import app
from lightseg.errors import LightsegError
from lightseg.runs.folder import PER_IMAGE
from lightseg.runs.protocol import describe, differences
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
from lightseg.tools.significance import (
    LEVEL,
    RESAMPLES,
    SEED,
    bootstrap_ci,
    detectable,
    difference_se,
    paired_p,
    run_mean,
    two_level_ci,
    two_level_p,
)
from lightseg.utils.console import console

DEFAULT_METRICS = ("test/dice", "test/iou")
#: Pixel calibration errors: always computed (eval, test stage), so no metrics config names them.
CALIBRATION = ("ece", "brier")
TESTS = ("auto", "wilcoxon", "hierarchical")


def lower_is_better(metric: str, runs: list[RunResult]) -> bool:
    """Losses, failure shares, calibration errors, and metrics whose class says
    ``higher_is_better = False``."""
    name = metric.split("/", 1)[-1]
    if "loss" in name or name.startswith("failure_rate/") or name in CALIBRATION:
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


@dataclass(frozen=True)
class Statistics:
    """How rows are compared (configs/table.yaml): the test, its bootstrap, the MDD's alpha and
    power."""

    test: str = "auto"  # auto | wilcoxon | hierarchical
    resamples: int = RESAMPLES
    seed: int = SEED
    alpha: float = 0.05
    power: float = 0.8

    def __post_init__(self) -> None:
        if self.test not in TESTS:
            raise LightsegError(
                f"test={self.test} is not a test of make table: set test=auto (the two-level "
                "bootstrap when a row has several runs, else Wilcoxon), test=wilcoxon or "
                "test=hierarchical."
            )

    def hierarchical(self, rows: list[Row], metrics: list[str]) -> bool:
        """``auto``: the two-level bootstrap when a row has several runs with per-image values."""
        several = any(len(scored(row, m)) > 1 for row in rows for m in metrics)
        return self.test == "hierarchical" or (self.test == "auto" and several)


def scored(row: Row, metric: str) -> list[RunResult]:
    """The row's runs with per-image values of ``metric``."""
    return [run for run in row.runs if run.per_image.get(metric)]


@dataclass
class Cell:
    """One configuration's numbers for one metric."""

    runs: list[float]
    images: dict[str, float]
    value: float | None = None  # the per-image statistic that the CI, p and bold are about
    ci: tuple[float, float] | None = None
    p: float | None = None
    p_text: str = "-"  # "best", "n/a", or the formatted p-value
    mdd: float | None = None  # minimal detectable difference of the comparison with the best
    difference: float | None = None  # value - the best row's value
    bold: bool = False  # the best value (or as good at the table's digits)

    @property
    def image_mean(self) -> float | None:
        return statistics.fmean(self.images.values()) if self.images else None


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


def compare(
    rows: list[Row], metrics: list[str], digits: int, stats: Statistics
) -> tuple[dict[tuple[str, str], Cell], list[str], str]:
    """Per metric and row: a cell (bold if best); notes on what could not be computed or
    resolved; and the sentence that says which test gave the p-values."""
    cells, notes = {}, []
    hierarchical = stats.hierarchical(rows, metrics)
    for metric in metrics:
        lower = lower_is_better(metric, [run for row in rows for run in row.runs])
        for row in rows:
            cell = cells[metric, row.label] = Cell(row.values(metric), row.images(metric))
            if hierarchical:
                per_run = [run.per_image[metric] for run in scored(row, metric)]
                cell.value = run_mean(per_run)
                cell.ci = two_level_ci(per_run, stats.resamples, stats.seed)
            else:
                cell.value = cell.image_mean
                cell.ci = bootstrap_ci(list(cell.images.values()), stats.resamples, stats.seed)
        groups = protocol_groups(rows, metric)  # rows scored alike: compared only among them
        for _, group in groups:
            if len(group) == 1 < len(groups):  # compared with nothing: no best, no p
                cells[metric, group[0].label].p_text = "n/a"
                continue
            notes += rank(metric, group, cells, lower, hierarchical, stats, digits)
        notes += [
            f"{metric}: not paired: {', '.join(r.label for r in mine)} with "
            f"{', '.join(r.label for r in theirs)}: {differences(a, b)}."
            for j, (a, mine) in enumerate(groups)
            for b, theirs in groups[:j]
        ]
    return cells, notes, test_sentence(rows, metrics, hierarchical, stats)


def protocol_groups(rows: list[Row], metric: str) -> list[tuple[dict | None, list[Row]]]:
    """The rows with a value in groups whose protocol cards agree on what ``metric``'s comparison
    needs (:func:`~lightseg.runs.protocol.differences`), each with its record; cardless rows form
    a group of their own."""
    groups: list[tuple[dict | None, list[Row]]] = []
    for row in (r for r in rows if r.values(metric)):
        record = row.comparison(metric)
        group = next((g for k, g in groups if differences(record, k) is None), None)
        if group is None:
            groups.append((record, [row]))
        else:
            group.append(row)
    return groups


def paired_runs(row: Row, reference: Row, metric: str) -> tuple[list, list, bool]:
    """Both rows' per-image values, run by run, and whether the runs pair: when both rows have
    the same replicates (seed, data.split.seed, data.split.fold), ordered to match."""
    keys = ("seed", "data.split.seed", "data.split.fold")
    mine, theirs = scored(row, metric), scored(reference, metric)
    replicates = [{tuple(r.setting(k) for k in keys): r for r in runs} for runs in (mine, theirs)]
    paired = (
        len(mine) == len(theirs) == len(replicates[0])
        and replicates[0].keys() == replicates[1].keys()
    )
    if paired:
        order = sorted(replicates[0])
        mine, theirs = [replicates[0][k] for k in order], [replicates[1][k] for k in order]
    return [r.per_image[metric] for r in mine], [r.per_image[metric] for r in theirs], paired


def rank(metric, rows, cells, lower, hierarchical, stats: Statistics, digits) -> list[str]:
    """Bold the best of ``rows`` (one protocol) and give the others their p-value and MDD against
    it; notes on rows that cannot be paired, and on differences the test set cannot resolve."""
    mine = {row.label: cells[metric, row.label] for row in rows}
    # best: the per-image statistic the CI and p are about; the run means without one
    means = {label: cell.value for label, cell in mine.items() if cell.value is not None}
    if not means:
        means = {label: statistics.fmean(cell.runs) for label, cell in mine.items() if cell.runs}
    if not means:
        return []
    target = (min if lower else max)(means.values())
    for label, mean in means.items():
        mine[label].bold = round(mean, digits) == round(target, digits)
    reference = next(r for r in rows if means.get(r.label) == target)
    base = mine[reference.label]
    if not base.images:  # no row has per-image values (a value comes from them)
        return []
    base.p_text = "best"
    notes, unresolved = [], []
    for row in rows:
        cell = mine[row.label]
        if row is reference or not cell.images:
            continue
        if row.tested(metric) != reference.tested(metric):
            cell.p_text = "n/a"
            notes.append(
                f"{metric}: {row.label} was tested on other images than the best row "
                f"({reference.label}): not paired, no p."
            )
            continue
        ours, theirs, paired = paired_runs(row, reference, metric)
        if hierarchical:
            cell.p = two_level_p(ours, theirs, paired, stats.resamples, stats.seed)
        else:
            shared = [i for i in cell.images if i in base.images]
            cell.p = paired_p([cell.images[i] for i in shared], [base.images[i] for i in shared])
        se = difference_se(ours, theirs, paired, "runs" if hierarchical else "images")
        cell.mdd = None if se is None else detectable(se, stats.alpha, stats.power)
        cell.difference = cell.value - base.value
        cell.p_text = "<0.001" if cell.p < 0.001 else f"{cell.p:.3f}"
        if cell.mdd is not None:
            cell.p_text += f" ({cell.mdd:.{digits}f})"
            if abs(cell.difference) < cell.mdd and cell.p >= stats.alpha:
                unresolved.append(
                    f"{row.label} ({cell.difference:+.{digits}f}, MDD {cell.mdd:.{digits}f})"
                )
    if unresolved:
        notes.append(
            f"{metric}: the test set cannot resolve this difference from the best row "
            f"({reference.label}): not significant, and smaller than the minimal detectable "
            f"difference: {'; '.join(unresolved)}. Such a p says the test set is too small "
            "for a difference of this size, not that the configurations are equal."
        )
    return notes


def spread(counts: set[int]) -> str:
    return f"{min(counts)}" if len(counts) == 1 else f"{min(counts)}-{max(counts)}"


def test_sentence(rows: list[Row], metrics: list[str], hierarchical: bool, stats) -> str:
    """Which test gave the p-values, over how much data; and what the MDD is."""
    runs = {len(scored(row, m)) for row in rows for m in metrics if scored(row, m)}
    images = {len(row.tested(m)) for row in rows for m in metrics if row.tested(m)}
    if not runs:
        return ""
    power = (
        f"In parentheses, the minimal detectable difference (MDD): the true difference this "
        f"test finds with {stats.power:.0%} power at alpha {stats.alpha:g} (two-sided) for "
        f"these {'runs and ' if hierarchical else ''}images (normal approximation)."
    )
    if not hierarchical:
        return (
            "p: two-sided Wilcoxon signed-rank test over images (scipy.stats.wilcoxon) of the "
            f"per-image values against the best row's on the same {spread(images)} images; "
            f"run-to-run training variance is not part of it. {power}"
        )
    return (
        f"p: two-level bootstrap over {spread(runs)} runs x {spread(images)} images, two-sided, "
        f"of the difference from the best row ({stats.resamples} resamples of the runs and, "
        f"within them, of the images by id, seed {stats.seed}; runs pair by seed and data "
        f"split where both rows have the same ones). {power}"
    )


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

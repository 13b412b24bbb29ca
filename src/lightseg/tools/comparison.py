"""Which row of a results table is best and how sure we can be: per metric, each row's per-image
statistic with its bootstrap CI, and the p-value and minimal detectable difference against the
best row scored alike (their protocol cards agree, :mod:`lightseg.runs.protocol`). The tests
themselves are in :mod:`lightseg.tools.significance`; ``make table`` lays the cells out."""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from hydra.utils import get_class

from lightseg.errors import LightsegError
from lightseg.runs.protocol import differences
from lightseg.tools.results import Row, RunResult
from lightseg.tools.significance import (
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

"""The statistics behind results tables, on per-image scores: a seeded percentile bootstrap of
the mean (the same table every time) and the paired Wilcoxon test, which see images only; and a
two-level bootstrap over runs and images (:func:`two_level`), which also sees run-to-run
training variance; and the minimal detectable difference."""

from __future__ import annotations

import statistics
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95


def bootstrap_ci(
    values: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> tuple[float, float] | None:
    """The ``level`` percentile-bootstrap interval of the mean of ``values`` (images drawn with
    replacement ``resamples`` times); None for fewer than two values (nothing to resample)."""
    data = np.asarray(values, dtype=float)
    if data.size < 2:
        return None
    rng = np.random.default_rng(seed)  # np.mean takes axis=: scipy resamples it vectorised
    interval = stats.bootstrap(
        [data], np.mean, n_resamples=resamples, confidence_level=level, method="percentile", rng=rng
    ).confidence_interval
    return float(interval.low), float(interval.high)


def paired_p(x: Sequence[float], y: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of the paired differences ``x - y`` (scipy's
    defaults); 1 when every difference is zero, where scipy has no answer."""
    difference = np.asarray(x, dtype=float) - np.asarray(y, dtype=float)
    if not difference.any():
        return 1.0
    with warnings.catch_warnings():  # scipy warns about tiny samples; the p-value says it
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        return float(stats.wilcoxon(difference).pvalue)


#: A run's per-image values: ``{image id: value}`` (NaN: the image has no value).
Run = Mapping[str, float]

CHUNK = 1000  # resamples drawn at once: bounds the memory of the image weights


def run_mean(runs: Sequence[Run]) -> float | None:
    """The mean over runs of each run's mean over its images: what a row's two-level CI and
    p-value are about (None without a value)."""
    arrays = [np.fromiter(run.values(), float) for run in runs]
    means = [np.nanmean(v) for v in arrays if not np.isnan(v).all()]
    return float(np.mean(means)) if means else None


def two_level(
    rows: Sequence[Sequence[Run]], resamples: int, seed: int, paired_runs: bool = False
) -> np.ndarray:
    """Bootstrap distribution (``len(rows)`` x ``resamples``) of each row's :func:`run_mean`,
    resampling a row's runs (seeds, folds) with replacement, and images by id: one draw per set
    of images, shared by the runs scored on it (seeds of one split: crossed; folds: nested) and
    by rows compared on the same images (paired). ``paired_runs``: the rows' runs match in order
    (same seeds / folds) and draw the same positions. With one run per row: the image bootstrap."""
    ids = sorted({i for row in rows for run in row for i in run})
    column = {i: k for k, i in enumerate(ids)}
    everything = [run for row in rows for run in row]
    values = np.full((len(everything), len(ids)), np.nan)
    for r, run in enumerate(everything):
        values[r, [column[i] for i in run]] = list(run.values())
    scored = ~np.isnan(values)
    values = np.nan_to_num(values)
    sets = sorted({tuple(sorted(run)) for run in everything})  # each set of images, its draw
    sizes = [len(row) for row in rows]
    starts = np.cumsum([0, *sizes[:-1]])
    # images and runs from streams of their own: the image draws do not depend on the run count
    images_rng, runs_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    out = np.empty((len(rows), resamples))
    for begin in range(0, resamples, CHUNK):
        count = min(CHUNK, resamples - begin)
        weights = np.zeros((count, len(ids)))
        for members in sets:
            cols = [column[i] for i in members]
            weights[:, cols] = images_rng.multinomial(
                len(cols), np.full(len(cols), 1 / len(cols)), count
            )
        with np.errstate(invalid="ignore", divide="ignore"):  # a draw of images without values
            means = (weights @ (values * scored).T) / (weights @ scored.T)  # count x runs
        shared = runs_rng.integers(0, sizes[0], (count, sizes[0])) if paired_runs else None
        for k, (size, start) in enumerate(zip(sizes, starts, strict=True)):
            picks = shared if shared is not None else runs_rng.integers(0, size, (count, size))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out[k, begin : begin + count] = np.nanmean(
                    np.take_along_axis(means, start + picks, 1), 1
                )
    return out


def two_level_ci(
    runs: Sequence[Run], resamples: int = RESAMPLES, seed: int = SEED, level: float = LEVEL
) -> tuple[float, float] | None:
    """The ``level`` percentile interval of :func:`run_mean` under :func:`two_level`; None for a
    single value (nothing to resample)."""
    if sum(np.isfinite(list(run.values())).sum() for run in runs) < 2:
        return None
    draws = two_level([runs], resamples, seed)[0]
    low, high = np.nanpercentile(draws, [50 * (1 - level), 50 * (1 + level)])
    return float(low), float(high)


def two_level_p(
    runs: Sequence[Run],
    reference: Sequence[Run],
    paired_runs: bool,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> float:
    """Two-sided bootstrap p-value of ``run_mean(runs) - run_mean(reference)``: twice the share
    of the :func:`two_level` differences on the far side of zero, counted as (k + 1) / (B + 1)
    so that it is never 0; 1 when every difference is zero."""
    rows = two_level([runs, reference], resamples, seed, paired_runs)
    difference = rows[0] - rows[1]
    difference = difference[~np.isnan(difference)]
    tail = min((difference <= 0).sum(), (difference >= 0).sum())
    return float(min(1.0, 2 * (tail + 1) / (difference.size + 1)))


def detectable(standard_error: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimal detectable difference: the true difference a two-sided test at ``alpha`` finds
    with probability ``power``, for a difference estimate of this standard error (normal
    approximation): ``(z_{1-alpha/2} + z_{power}) * standard_error``."""
    return float((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * standard_error)


def difference_se(
    runs: Sequence[Run], reference: Sequence[Run], paired_runs: bool, level: str
) -> float | None:
    """Standard error of ``run_mean(runs) - run_mean(reference)``. Images: ``s_d^2 / n`` of the
    differences of each image's mean over a row's runs (``level="images"``, Wilcoxon's, stops
    there). ``level="runs"`` adds the sample variance of the run-mean differences over the ``R``
    paired runs divided by ``R`` (unpaired: each row's variance of its run means over its run
    count). Runs on one shared test set (seeds) add both terms (crossed: slightly conservative);
    folds use the run term alone, whose run means already carry their images' variance."""
    mine, theirs = image_means(runs), image_means(reference)
    shared = [i for i in mine if i in theirs]
    if len(shared) < 2:
        return None
    image_term = np.var([mine[i] - theirs[i] for i in shared], ddof=1) / len(shared)
    if level == "images":
        return float(np.sqrt(image_term))
    pairs = zip(runs, reference, strict=True) if paired_runs else ()
    means = [(run_mean([a]), run_mean([b])) for a, b in pairs]
    differences = [a - b for a, b in means if a is not None and b is not None]
    if len(differences) > 1:
        run_term = np.var(differences, ddof=1) / len(differences)
    else:
        run_term = sum(
            np.var(means, ddof=1) / len(means)
            for row in (runs, reference)
            if len(means := [m for run in row if (m := run_mean([run])) is not None]) > 1
        )
    one_set = len({frozenset(run) for run in (*runs, *reference)}) == 1
    if one_set or max(len(runs), len(reference)) == 1:
        return float(np.sqrt(image_term + run_term))
    return float(np.sqrt(run_term))


def image_means(runs: Sequence[Run]) -> dict[str, float]:
    """Each image's value averaged over the runs that scored it (NaN left out), by id."""
    scores: dict[str, list[float]] = {}
    for run in runs:
        for image, value in run.items():
            if not np.isnan(value):
                scores.setdefault(image, []).append(value)
    return {image: statistics.fmean(v) for image, v in sorted(scores.items())}

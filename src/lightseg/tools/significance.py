"""The statistics behind results tables, on per-image scores, from scipy: a seeded percentile
bootstrap of the mean (a table is the same every time it is made) and the paired Wilcoxon test.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

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

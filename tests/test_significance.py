"""Bootstrap intervals and paired tests: reproducible, covering, and equal to scipy's numbers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lightseg.tools.significance import bootstrap_ci, paired_p
from tests.test_results import DIFFERENCES, DOCUMENTED_P


def test_bootstrap_ci_is_reproducible_for_a_seed():
    values = np.random.default_rng(1).beta(8, 2, size=30)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)
    low, high = bootstrap_ci(values, seed=7)
    assert low < values.mean() < high
    assert bootstrap_ci([0.5]) is None  # nothing to resample
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_bootstrap_ci_covers_the_true_mean_about_95_percent_of_the_time():
    # 300 synthetic test sets of 40 per-image scores from a skewed distribution of known mean
    true_mean = 8 / (8 + 2)
    rng = np.random.default_rng(0)
    covered = []
    for trial in range(300):
        low, high = bootstrap_ci(rng.beta(8, 2, size=40), resamples=2000, seed=trial)
        covered.append(low <= true_mean <= high)
    # the percentile bootstrap of a mean is slightly liberal at n = 40: about 0.93-0.95
    assert 0.90 <= np.mean(covered) <= 0.98


def test_paired_p_is_scipys_wilcoxon_signed_rank_test():
    y = np.linspace(0.5, 0.9, len(DIFFERENCES))
    x = y + np.array(DIFFERENCES) / 1000
    assert paired_p(x, y) == pytest.approx(DOCUMENTED_P)  # the value scipy documents
    assert paired_p(x, y) == pytest.approx(stats.wilcoxon(x, y).pvalue)
    assert paired_p(y, x) == pytest.approx(DOCUMENTED_P)  # two-sided
    # larger samples use the normal approximation; still scipy's number
    rng = np.random.default_rng(0)
    a, b = rng.random(60), rng.random(60)
    assert paired_p(a, b) == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert paired_p([0.5, 0.6], [0.5, 0.6]) == 1.0  # nothing differs

"""Bootstrap intervals and paired tests: reproducible, covering, and equal to scipy's numbers;
the two-level bootstrap over runs and images, and the minimal detectable difference."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from lightseg.tools.significance import (
    bootstrap_ci,
    detectable,
    difference_se,
    paired_p,
    run_mean,
    two_level,
    two_level_ci,
    two_level_p,
)
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


def as_runs(matrix) -> list[dict[str, float]]:
    """Runs x images values as the table passes them: one ``{image id: value}`` per run."""
    return [{f"img{i:02d}": float(v) for i, v in enumerate(row)} for row in np.atleast_2d(matrix)]


def test_two_level_bootstrap_of_identical_runs_is_the_image_bootstrap():
    values = np.random.default_rng(1).beta(8, 2, size=40)
    one = two_level_ci(as_runs(values), resamples=4000, seed=2)
    same = two_level_ci(as_runs([values, values]), resamples=4000, seed=2)
    assert same == pytest.approx(one, rel=1e-12)  # the same draws of the images
    reference = stats.bootstrap(
        (values,), np.mean, n_resamples=4000, method="percentile", rng=np.random.default_rng(2)
    ).confidence_interval
    assert one == pytest.approx((reference.low, reference.high), abs=0.005)  # another stream
    assert run_mean(as_runs([values, values])) == pytest.approx(values.mean())
    assert two_level_ci(as_runs([0.5])) is None


def test_two_level_bootstrap_sees_between_run_variance():
    # runs constant over images: only the run draw varies. The mean of 3 runs drawn with
    # replacement from (0.1, 0.5, 0.9) has variance pvar / 3 = (0.32 / 3) / 3 = 0.035556
    runs = as_runs(np.repeat([[0.1], [0.5], [0.9]], 20, axis=1))
    draws = two_level([runs], resamples=20_000, seed=0)[0]
    assert draws.mean() == pytest.approx(0.5, abs=0.005)
    assert draws.var() == pytest.approx(0.32 / 9, rel=0.03)
    # the same images with seeds that differ by +-0.05: a wider interval than identical seeds
    values = np.random.default_rng(1).beta(8, 2, size=40)
    same = two_level_ci(as_runs([values] * 3), resamples=4000)
    spread = two_level_ci(as_runs([values - 0.05, values, values + 0.05]), resamples=4000)
    assert spread[1] - spread[0] > 1.5 * (same[1] - same[0])
    assert spread[0] < values.mean() < spread[1]


def test_two_level_p_by_hand():
    values = np.random.default_rng(3).beta(8, 2, size=(3, 30))
    same = as_runs(values)
    assert two_level_p(same, same, paired_runs=True, resamples=999) == 1.0  # nothing differs
    # better by 0.1 on every image of every run: no draw reaches 0, p = 2 * (0 + 1) / (999 + 1)
    better = as_runs(values + 0.1)
    assert two_level_p(better, same, paired_runs=True, resamples=999) == pytest.approx(0.002)
    assert two_level_p(same, better, paired_runs=False, resamples=999) == pytest.approx(0.002)


def test_minimal_detectable_difference_by_hand():
    differences = np.array([0.02, -0.01, 0.04, 0.0, 0.03, 0.01])
    se = difference_se(as_runs(differences), as_runs(np.zeros(6)), False, "images")
    assert se == pytest.approx(np.std(differences, ddof=1) / np.sqrt(6))
    assert detectable(se) == pytest.approx((1.959964 + 0.841621) * se, rel=1e-6)
    assert detectable(1.0, alpha=0.01, power=0.9) == pytest.approx(2.575829 + 1.281552)
    # two paired runs on one test set: the image term plus the run-mean differences' variance
    runs = as_runs([differences + 0.01, differences - 0.01])
    zero = as_runs(np.zeros((2, 6)))
    expected = np.var(differences, ddof=1) / 6 + np.var([0.01, -0.01], ddof=1) / 2
    assert difference_se(runs, zero, True, "runs") == pytest.approx(np.sqrt(expected))


def simulated_power(runs: int, images: int, sd_run: float, sd_image: float, repeats: int):
    """Share of ``repeats`` simulated comparisons that the two-level test finds at 0.05, the
    true difference being the MDD, with the per-run-and-image differences
    ``delta + a_run + b_image + e`` (crossed: seeds on one test set; e at sd 0.01); and the mean
    ratio of the estimated to the true variance of the mean difference."""
    rng = np.random.default_rng(0)
    true_se = np.sqrt(sd_run**2 / runs + sd_image**2 / images + 0.01**2 / (runs * images))
    delta = detectable(true_se)
    found, ratios = [], []
    for trial in range(repeats):
        a = rng.normal(0, sd_run, (runs, 1))
        d = delta + a + rng.normal(0, sd_image, images) + rng.normal(0, 0.01, (runs, images))
        row, zero = as_runs(d), as_runs(np.zeros_like(d))
        found.append(two_level_p(row, zero, True, resamples=400, seed=trial) < 0.05)
        ratios.append(difference_se(row, zero, True, "runs") ** 2 / true_se**2)
    return np.mean(found), np.mean(ratios)


def test_minimal_detectable_difference_has_80_percent_power_in_simulation():
    # the normal approximation itself: a z-test at the MDD, 20 000 test sets of 50 images
    rng = np.random.default_rng(0)
    sd, n = 0.05, 50
    d = rng.normal(detectable(sd / np.sqrt(n)), sd, (20_000, n))
    z = d.mean(axis=1) / (d.std(axis=1, ddof=1) / np.sqrt(n))
    assert np.mean(np.abs(z) > 1.959964) == pytest.approx(0.8, abs=0.015)
    # the table's test (two-level bootstrap) at the MDD the table reports: 400 simulated test
    # sets each (binomial sd of the power 0.02), within 0.05 of 80 %
    power, ratio = simulated_power(runs=1, images=50, sd_run=0.0, sd_image=0.05, repeats=400)
    assert power == pytest.approx(0.8, abs=0.05) and ratio == pytest.approx(1.0, abs=0.05)
    power, ratio = simulated_power(runs=3, images=40, sd_run=0.01, sd_image=0.03, repeats=400)
    assert power == pytest.approx(0.8, abs=0.05)
    # expected 1.015 (crossed design: the residual counted twice, a little conservative); the
    # run term has 2 degrees of freedom, so its mean over 400 sets varies by about 0.03
    assert ratio == pytest.approx(1.0, abs=0.1)

"""Per-pixel normalised entropy, the views' disagreement, and Dice vs coverage, by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightseg.tools.inference import Views, pooled
from lightseg.tools.uncertainty import coverage_curve, mean_entropy, normalized_entropy


def test_normalized_entropy_by_hand():
    binary = torch.tensor([[[0.5, 1.0]], [[0.5, 0.0]]])  # [C=2, H=1, W=2]: unsure, sure
    np.testing.assert_allclose(normalized_entropy(binary).numpy(), [[1.0, 0.0]])
    assert mean_entropy(binary) == pytest.approx(0.5)
    three = torch.tensor([0.5, 0.25, 0.25])[:, None, None]  # 0.5 ln 2 + 2 * 0.25 ln 4
    assert mean_entropy(three) == pytest.approx(1.5 * math.log(2) / math.log(3), abs=1e-12)
    assert mean_entropy(torch.full((3, 2, 2), 1 / 3)) == pytest.approx(1.0)


def test_pooled_views_disagree_by_the_mutual_information():
    sure_a = torch.tensor([[[1.0]], [[0.0]]])
    sure_b = torch.tensor([[[0.0]], [[1.0]]])
    views = [Views(p.numpy(), 1, mean_entropy(p)) for p in (sure_a, sure_b)]
    both = pooled(views)
    np.testing.assert_allclose(both.probabilities, [[[0.5]], [[0.5]]])
    assert both.count == 2 and both.entropy == 0.0  # each is sure, the two disagree:
    assert mean_entropy(torch.from_numpy(both.probabilities)) - both.entropy == 1.0  # MI = 1
    # a member of 3 TTA views weighs 3 times a member of one in the entropy
    weighted = pooled([Views(sure_a.numpy(), 3, 0.6), Views(sure_a.numpy(), 1, 0.2)])
    assert weighted.entropy == pytest.approx(0.5)


def test_coverage_curve_by_hand():
    uncertainty = [0.3, 0.1, 0.2, 0.4, 0.05]
    dice = [0.5, 0.9, 0.6, 1.0, math.nan]  # the last has no Dice: left out
    result = coverage_curve(uncertainty, dice)
    # most certain first: 0.9, 0.6, 0.5, 1.0 -> kept means 0.9, 0.75, 2/3, 0.75
    np.testing.assert_allclose(
        result["curve"], [[0.25, 0.9], [0.5, 0.75], [0.75, 2 / 3], [1, 0.75]]
    )
    assert result["area"] == pytest.approx((0.9 + 0.75 + 2 / 3 + 0.75) / 4)
    # best first: 1.0, 0.9, 0.6, 0.5 -> 1.0, 0.95, 5/6, 0.75
    assert result["oracle_area"] == pytest.approx((1.0 + 0.95 + 5 / 6 + 0.75) / 4)
    assert result["full"] == pytest.approx(0.75)
    ties = coverage_curve([0.2, 0.2], [0.4, 0.8])  # equal uncertainty: the given order
    assert ties["curve"] == [[0.5, 0.4], [1.0, pytest.approx(0.6)]]
    assert coverage_curve([0.1], [math.nan]) is None

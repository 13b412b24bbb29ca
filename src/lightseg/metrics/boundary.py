"""Boundary distances between the predicted and the true foreground, per image (binary)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage

from lightseg.metrics.per_image import PerImageMetric
from lightseg.task import IGNORE_INDEX


def boundary(mask: np.ndarray) -> np.ndarray:
    """The mask's own pixels that touch the background (4-neighbours; the image edge counts as
    background), MONAI's definition."""
    return mask ^ ndimage.binary_erosion(mask)


def surface_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distances (pixels) from each boundary pixel of ``a`` to the nearest of ``b``,
    and from ``b``'s to ``a``'s; both masks non-empty. Exact: scipy's distance transform."""
    rows, columns = np.nonzero(a | b)  # crop to both masks plus a margin: same distances
    window = np.s_[
        max(rows.min() - 1, 0) : rows.max() + 2, max(columns.min() - 1, 0) : columns.max() + 2
    ]
    edge_a, edge_b = boundary(a[window]), boundary(b[window])
    to_b = ndimage.distance_transform_edt(~edge_b)[edge_a]
    to_a = ndimage.distance_transform_edt(~edge_a)[edge_b]
    return to_b, to_a


class BoundaryDistance(PerImageMetric):
    """A distance between the predicted and the true foreground boundary of each image, in
    pixels of the image as scored, averaged over images; lower is better.

    Empty masks: no foreground in truth nor prediction scores 0; foreground in only one of
    them scores the image diagonal (the largest distance possible), so a missed or invented
    lesion counts as the worst case instead of dropping out. Predictions on ignored pixels
    count as background.
    """

    higher_is_better = False
    binary_only = True

    def distance(self, to_target: np.ndarray, to_prediction: np.ndarray) -> float:
        raise NotImplementedError

    def image_scores(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        predicted = ((preds == 1) & valid).cpu().numpy()
        true = (target == 1).cpu().numpy()
        height, width = preds.shape[-2:]
        diagonal = math.hypot(height, width)
        scores = []
        for p, t in zip(predicted, true, strict=True):
            if p.any() and t.any():
                scores.append(self.distance(*surface_distances(p, t)))
            else:
                scores.append(diagonal if p.any() or t.any() else 0.0)
        return torch.tensor(scores, dtype=torch.float64, device=preds.device)


class HD95(BoundaryDistance):
    """The 95th percentile Hausdorff distance: the larger of the two directed distances'
    95th percentiles (prediction to truth, truth to prediction), as MONAI computes it."""

    def __init__(
        self,
        num_classes: int,
        classes: list[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
        percentile: float = 95.0,
        **kwargs,
    ) -> None:
        super().__init__(num_classes, classes, ignore_index, **kwargs)
        self.percentile = float(percentile)

    def distance(self, to_target: np.ndarray, to_prediction: np.ndarray) -> float:
        return max(
            float(np.percentile(to_target, self.percentile)),
            float(np.percentile(to_prediction, self.percentile)),
        )


class ASSD(BoundaryDistance):
    """The average symmetric surface distance: the mean over the boundary pixels of both masks
    of the distance to the other mask's boundary."""

    def distance(self, to_target: np.ndarray, to_prediction: np.ndarray) -> float:
        return float(np.concatenate([to_target, to_prediction]).mean())

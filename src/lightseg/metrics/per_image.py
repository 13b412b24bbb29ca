"""Metrics with a value per image, averaged over images: Dice, ISIC's thresholded Jaccard, and
the boundary distances HD95 and ASSD."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from torchmetrics.utilities import dim_zero_cat

from lightseg.metrics.base import TaskMetric
from lightseg.metrics.confusion import class_scores, headline, per_image_confusion
from lightseg.task import IGNORE_INDEX


class PerImageMetric(TaskMetric):
    """A value per image, averaged over images. The state is every image's value, gathered from
    all processes; an image without a labelled pixel has none (NaN), and NaN is left out."""

    def add_states(self) -> None:
        self.add_state("scores", [], dist_reduce_fx="cat")

    def image_scores(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # [N]: the value of each image of the batch

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        labelled = (target != self.ignore_index).flatten(1).any(1)
        scores = self.image_scores(preds, target).double()
        self.scores.append(torch.where(labelled, scores, torch.nan))

    def compute(self) -> torch.Tensor:
        if isinstance(self.scores, list) and not self.scores:
            return torch.tensor(torch.nan)
        return dim_zero_cat(self.scores).nanmean()


class DicePerImage(PerImageMetric):
    """Dice of each image, averaged over images (binary: foreground; multiclass: the mean over
    the classes present in that image). An image with no foreground in truth or prediction
    scores 1 (nothing to find, nothing found); one with no labelled pixel does not count."""

    kind = "dice"

    def image_scores(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        confusion = per_image_confusion(preds, target, self.task.num_classes, self.ignore_index)
        scores = headline(class_scores(confusion, self.kind), self.task)
        if self.task.binary:  # nothing to find and nothing found: a perfect image
            scores = torch.where(scores.isnan(), 1.0, scores)
        return scores


class JaccardThresholded(DicePerImage):
    """The ISIC 2018 challenge's thresholded Jaccard: each image's IoU, counted as 0 below
    ``threshold`` (0.65), averaged over images. Empty images as in ``DicePerImage`` (1)."""

    kind = "iou"

    def __init__(
        self,
        num_classes: int,
        classes: list[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
        threshold: float = 0.65,
        **kwargs,
    ) -> None:
        super().__init__(num_classes, classes, ignore_index, **kwargs)
        self.threshold = float(threshold)

    def image_scores(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        scores = super().image_scores(preds, target)
        return torch.where(scores < self.threshold, 0.0, scores)


def surface_distances(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact distances (pixels) from each boundary pixel of ``a`` to the nearest of ``b``, and
    from ``b``'s to ``a``'s; both masks non-empty."""
    rows, columns = np.nonzero(a | b)  # crop to both masks plus a margin: same distances
    window = np.s_[
        max(rows.min() - 1, 0) : rows.max() + 2, max(columns.min() - 1, 0) : columns.max() + 2
    ]
    # boundaries as MONAI's: a mask's pixels with a background 4-neighbour (or on the image edge)
    edge_a, edge_b = (mask ^ ndimage.binary_erosion(mask) for mask in (a[window], b[window]))
    to_b = ndimage.distance_transform_edt(~edge_b)[edge_a]
    to_a = ndimage.distance_transform_edt(~edge_a)[edge_b]
    return to_b, to_a


class BoundaryDistance(PerImageMetric):
    """A distance (pixels) between the predicted and true foreground boundary of each image,
    averaged over images. No foreground in either scores 0; in only one, the image diagonal, so
    a missed or invented lesion counts as the worst case. Predictions on ignored pixels are
    background."""

    higher_is_better = False
    binary_only = True

    def distance(self, to_target: np.ndarray, to_prediction: np.ndarray) -> float:
        raise NotImplementedError

    def image_scores(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        predicted = ((preds == 1) & (target != self.ignore_index)).cpu().numpy()
        true = (target == 1).cpu().numpy()
        diagonal = math.hypot(*preds.shape[-2:])
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
        percentiles = (np.percentile(side, self.percentile) for side in (to_target, to_prediction))
        return float(max(percentiles))


class ASSD(BoundaryDistance):
    """The average symmetric surface distance: the mean over the boundary pixels of both masks
    of the distance to the other mask's boundary."""

    def distance(self, to_target: np.ndarray, to_prediction: np.ndarray) -> float:
        return float(np.concatenate([to_target, to_prediction]).mean())

"""Metrics with a value per image, averaged over images."""

from __future__ import annotations

import torch
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
        """``[N]``: the value of each image of the batch."""
        raise NotImplementedError

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        labelled = (target != self.ignore_index).flatten(1).any(1)
        scores = self.image_scores(preds, target).double()
        self.scores.append(torch.where(labelled, scores, torch.nan))

    def latest(self) -> torch.Tensor:
        """``[N]``: the value of each image of the last update (what per_image.csv shows)."""
        return self.scores[-1]

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

"""Metrics of the split's confusion matrix: each a function of ``[..., C, C]`` counts
(``values``), of the split's matrix for its value and of each image's for per-image values."""

from __future__ import annotations

import torch

from lightseg.metrics.base import TaskMetric, class_key
from lightseg.task import IGNORE_INDEX, Task


def per_image_confusion(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``[N, C, C]``: the confusion matrix of each image of the batch (rows: true class)."""
    n = preds.shape[0]
    image = torch.arange(n, device=preds.device).view(n, *([1] * (preds.dim() - 1)))
    index = (image * num_classes + target.long()) * num_classes + preds.long()
    counts = torch.bincount(index[target != ignore_index], minlength=n * num_classes**2)
    return counts.reshape(n, num_classes, num_classes)


def confusion_matrix(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``[C, C]`` counts, rows = true class, columns = predicted class; ignored pixels dropped."""
    return per_image_confusion(preds, target, num_classes, ignore_index).sum(0)


def ratio(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator`` in float64; NaN where the denominator is 0 (no value)."""
    return torch.where(denominator > 0, numerator.double() / denominator.clamp(min=1), torch.nan)


def class_scores(confusion: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-class IoU or Dice from ``[..., C, C]`` counts; NaN where a class is absent."""
    hits = confusion.diagonal(dim1=-2, dim2=-1)
    true, predicted = confusion.sum(-1), confusion.sum(-2)
    if kind == "iou":
        return ratio(hits, true + predicted - hits)
    return ratio(2 * hits, true + predicted)


def class_recall(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class recall from ``[..., C, C]`` counts; NaN where a class is not in the truth."""
    return ratio(confusion.diagonal(dim1=-2, dim2=-1), confusion.sum(-1))


def headline(per_class: torch.Tensor, task: Task) -> torch.Tensor:
    """The foreground value (binary) or the mean over classes present (multiclass)."""
    return per_class[..., 1] if task.binary else per_class.nanmean(-1)


class ConfusionMatrixMetric(TaskMetric):
    """A metric of the split's confusion matrix (summed over batches and processes); in a
    ``build_metrics`` collection those of one task share it (a torchmetrics compute group)."""

    def add_states(self) -> None:
        size = self.task.num_classes
        self.add_state("confusion", torch.zeros(size, size, dtype=torch.long), "sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.confusion += confusion_matrix(preds, target, self.task.num_classes, self.ignore_index)

    def compute(self) -> torch.Tensor | dict[str, torch.Tensor]:
        return self.values(self.confusion)

    def values(self, confusion: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        """The metric of ``[..., C, C]`` counts: one value (or dict of them) per matrix."""
        raise NotImplementedError


class IoU(ConfusionMatrixMetric):
    """Intersection over union: headline (foreground or mean) and one value per class."""

    kind = "iou"

    def values(self, confusion: torch.Tensor) -> dict[str, torch.Tensor]:
        per_class = class_scores(confusion, self.kind)
        named = {class_key(c): per_class[..., i] for i, c in enumerate(self.task.classes)}
        return {"": headline(per_class, self.task), **named}


class Dice(IoU):
    """Dice (F1) coefficient: headline (foreground or mean) and one value per class."""

    kind = "dice"


class PixelAccuracy(ConfusionMatrixMetric):
    """Correctly classified labelled pixels over all labelled pixels."""

    def values(self, confusion: torch.Tensor) -> torch.Tensor:
        return ratio(confusion.diagonal(dim1=-2, dim2=-1).sum(-1), confusion.sum((-2, -1)))


class Sensitivity(ConfusionMatrixMetric):
    """Share of the true foreground pixels predicted as foreground (recall); NaN without any."""

    binary_only = True

    def values(self, confusion: torch.Tensor) -> torch.Tensor:
        return class_recall(confusion)[..., 1]


class Specificity(ConfusionMatrixMetric):
    """Share of the true background pixels predicted as background; NaN without any."""

    binary_only = True

    def values(self, confusion: torch.Tensor) -> torch.Tensor:
        return class_recall(confusion)[..., 0]


class MeanAccuracy(ConfusionMatrixMetric):
    """Per-class accuracy (recall) averaged over the classes in the truth (mmsegmentation's
    mAcc); a class not in the truth has no accuracy and is left out."""

    def values(self, confusion: torch.Tensor) -> torch.Tensor:
        return class_recall(confusion).nanmean(-1)


class FrequencyWeightedIoU(ConfusionMatrixMetric):
    """Each class's IoU weighted by its share of the labelled pixels (FCN's f.w. IU)."""

    def values(self, confusion: torch.Tensor) -> torch.Tensor:
        true = confusion.sum(-1)
        iou = class_scores(confusion, "iou").nan_to_num(0.0)  # NaN only where weight is 0
        return ratio((true * iou).sum(-1), true.sum(-1))

"""IoU, Dice and pixel accuracy from torchmetrics, named per DESIGN.md and synced across ranks.

Binary tasks report the foreground class as ``iou``/``dice`` (the PH2/ISIC convention) plus
``dice_per_image``; multiclass tasks report the mean over classes present (the VOC mIoU).
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryF1Score,
    MulticlassAccuracy,
    MulticlassF1Score,
    MulticlassJaccardIndex,
)

from lightseg.task import IGNORE_INDEX, Task


class SegmentationMetrics(nn.Module):
    """Accumulates predicted class indices against masks; ``compute`` returns named scalars."""

    def __init__(self, task: Task) -> None:
        super().__init__()
        self.task = task
        n, ignore = task.num_classes, IGNORE_INDEX
        self.collection = MetricCollection(
            {
                "iou": MulticlassJaccardIndex(n, average="none", ignore_index=ignore),
                "iou_mean": MulticlassJaccardIndex(n, average="macro", ignore_index=ignore),
                "dice": MulticlassF1Score(n, average="none", ignore_index=ignore),
                "dice_mean": MulticlassF1Score(n, average="macro", ignore_index=ignore),
                "acc": MulticlassAccuracy(n, average="micro", ignore_index=ignore),
            }
        )
        self.per_image = (
            BinaryF1Score(multidim_average="samplewise", ignore_index=ignore, zero_division=1)
            if task.binary
            else None
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds`` and ``target``: [N, H, W] class indices (255 in target = ignore)."""
        self.collection.update(preds, target)
        if self.per_image is not None:
            self.per_image.update(preds, target)

    def compute(self) -> dict[str, torch.Tensor]:
        values = self.collection.compute()
        if self.task.binary:
            out = {"iou": values["iou"][1], "dice": values["dice"][1]}
            out["dice_per_image"] = self.per_image.compute().mean()
        else:
            out = {"iou": values["iou_mean"], "dice": values["dice_mean"]}
        out["acc"] = values["acc"]
        for index, name in enumerate(self.task.classes):
            key = name.replace(" ", "_")
            out[f"iou_{key}"] = values["iou"][index]
            out[f"dice_{key}"] = values["dice"][index]
        return out

    def reset(self) -> None:
        self.collection.reset()
        if self.per_image is not None:
            self.per_image.reset()

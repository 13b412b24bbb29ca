"""Segmentation metrics as torchmetrics ``Metric`` objects, and the collection a run reports.

The metric contract: a torchmetrics ``Metric`` updated with ``(preds, target)``, both
``[N, H, W]`` class indices, ``target`` 255 where pixels are ignored. ``compute()`` returns a
scalar, a vector of one value per class, or a dict of scalars; under the name ``iou`` these are
logged as ``val/iou``, ``val/iou_<class>``, and ``val/iou`` / ``val/iou_<key>`` (key ``""`` is
the metric itself). lightseg fills in ``num_classes``, ``classes`` and ``ignore_index`` for
constructors that take them. States are synced across processes by torchmetrics.

A class that occurs in neither the predictions nor the targets has no IoU or Dice: its value
is NaN (shown empty, written as null) and it is left out of every mean.

Built-in metrics over the whole split (pooled confusion matrix, one state shared by all of
them): ``IoU``, ``Dice`` (binary: the foreground class, the PH2/ISIC convention; multiclass:
the mean over classes present, VOC's mIoU), ``PixelAccuracy``, ``Sensitivity`` and
``Specificity`` (binary), ``MeanAccuracy`` and ``FrequencyWeightedIoU`` (multiclass). Built-in
metrics per image, averaged over images: ``DicePerImage``, ``JaccardThresholded`` (ISIC 2018)
and the boundary distances ``HD95`` and ``ASSD`` in pixels (binary). Their rules for empty
masks are in their docstrings.
"""

from lightseg.metrics.base import TaskMetric
from lightseg.metrics.boundary import ASSD, HD95, BoundaryDistance
from lightseg.metrics.collection import (
    build_metrics,
    class_key,
    finite_or_none,
    metric_values,
    metrics_for,
    named_values,
    update_per_image,
)
from lightseg.metrics.confusion import (
    ConfusionMatrixMetric,
    Dice,
    FrequencyWeightedIoU,
    IoU,
    MeanAccuracy,
    PixelAccuracy,
    Sensitivity,
    Specificity,
    confusion_matrix,
)
from lightseg.metrics.per_image import DicePerImage, JaccardThresholded, PerImageMetric

__all__ = [
    "ASSD",
    "HD95",
    "BoundaryDistance",
    "ConfusionMatrixMetric",
    "Dice",
    "DicePerImage",
    "FrequencyWeightedIoU",
    "IoU",
    "JaccardThresholded",
    "MeanAccuracy",
    "PerImageMetric",
    "PixelAccuracy",
    "Sensitivity",
    "Specificity",
    "TaskMetric",
    "build_metrics",
    "class_key",
    "confusion_matrix",
    "finite_or_none",
    "metric_values",
    "metrics_for",
    "named_values",
    "update_per_image",
]

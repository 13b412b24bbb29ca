"""Segmentation metrics as torchmetrics ``Metric`` objects, and the collection a run reports.

The metric contract: a torchmetrics ``Metric`` updated with ``(preds, target)``, both
``[N, H, W]`` class indices, ``target`` 255 where pixels are ignored. ``compute()`` returns a
scalar, a vector of one value per class, or a dict of scalars; under the name ``iou`` these are
logged as ``val/iou``, ``val/iou_<class>``, and ``val/iou`` / ``val/iou_<key>`` (key ``""`` is
the metric itself). lightseg fills in ``num_classes``, ``classes`` and ``ignore_index`` for
constructors that take them. A class in neither predictions nor targets has no IoU or Dice: NaN
(shown empty, written as null), left out of every mean. ``configs/metrics/`` holds the sets a
binary and a multiclass task report.
"""

from lightseg.metrics.base import TaskMetric, class_key
from lightseg.metrics.calibration import PixelCalibration
from lightseg.metrics.collection import (
    build_metrics,
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
from lightseg.metrics.per_image import ASSD, HD95, DicePerImage, JaccardThresholded, PerImageMetric

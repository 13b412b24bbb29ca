"""Segmentation metrics as torchmetrics ``Metric`` objects, and the named set a run reports.

The metric contract: a torchmetrics ``Metric`` updated with ``(preds, target)``, both
``[N, H, W]`` class indices, ``target`` 255 where pixels are ignored. ``compute()`` returns a
scalar, a vector of one value per class, or a dict of scalars; under the name ``iou`` these are
logged as ``val/iou``, ``val/iou_<class>``, and ``val/iou`` / ``val/iou_<key>`` (key ``""`` is
the metric itself). lightseg fills in ``num_classes``, ``classes`` and ``ignore_index`` for
constructors that take them. States are synced across processes by torchmetrics.

A class that occurs in neither the predictions nor the targets has no IoU or Dice: its value
is NaN (shown empty, written as null) and it is left out of every mean.

Built-in metrics over the whole split (pooled confusion matrix): ``IoU``, ``Dice`` (binary:
the foreground class, the PH2/ISIC convention; multiclass: the mean over classes present,
VOC's mIoU), ``PixelAccuracy``, ``Sensitivity`` and ``Specificity`` (binary),
``MeanAccuracy`` and ``FrequencyWeightedIoU`` (multiclass). Built-in metrics per image,
averaged over images: ``DicePerImage``, ``JaccardThresholded`` (ISIC 2018) and the boundary
distances ``HD95`` and ``ASSD`` in pixels (binary). Their rules for empty masks are in their
docstrings.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from scipy import ndimage
from torch import nn
from torchmetrics import Metric

from lightseg.errors import LightsegError
from lightseg.task import IGNORE_INDEX, Task, task_arguments


def confusion_matrix(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``[C, C]`` counts, rows = true class, columns = predicted class; ignored pixels dropped."""
    valid = target != ignore_index
    index = target[valid].long() * num_classes + preds[valid].long()
    return torch.bincount(index, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_image_confusion(
    preds: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """``[N, C, C]``: the confusion matrix of each image of the batch."""
    n = preds.shape[0]
    valid = target != ignore_index
    image = torch.arange(n, device=preds.device).view(n, *([1] * (preds.dim() - 1)))
    index = (image * num_classes + target.long()) * num_classes + preds.long()
    counts = torch.bincount(index[valid], minlength=n * num_classes**2)
    return counts.reshape(n, num_classes, num_classes)


def class_scores(confusion: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-class IoU or Dice from ``[..., C, C]`` counts; NaN where a class is absent."""
    hits = confusion.diagonal(dim1=-2, dim2=-1).double()
    true, predicted = confusion.sum(-1).double(), confusion.sum(-2).double()
    denominator = true + predicted - hits if kind == "iou" else true + predicted
    numerator = hits if kind == "iou" else 2 * hits
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1), torch.nan)


def class_recall(confusion: torch.Tensor) -> torch.Tensor:
    """Per-class recall (share of each true class found) from ``[..., C, C]`` counts; NaN where
    a class is not in the truth."""
    hits = confusion.diagonal(dim1=-2, dim2=-1).double()
    true = confusion.sum(-1).double()
    return torch.where(true > 0, hits / true.clamp(min=1), torch.nan)


def headline(per_class: torch.Tensor, task: Task) -> torch.Tensor:
    """The foreground value (binary) or the mean over classes present (multiclass)."""
    return per_class[..., 1] if task.binary else per_class.nanmean(-1)


class TaskMetric(Metric):
    """A metric that knows the task's classes and the ignore label (filled in by lightseg).

    Subclasses add their states in ``add_states`` rather than in ``__init__``, and a subclass
    with options of its own repeats this signature: lightseg fills in only the arguments a
    constructor's signature names.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    #: Whether the metric is defined for binary tasks only (foreground vs background).
    binary_only = False

    def __init__(
        self,
        num_classes: int,
        classes: list[str] | None = None,
        ignore_index: int = IGNORE_INDEX,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.task = Task(tuple(classes)) if classes else Task.of(num_classes)
        self.ignore_index = int(ignore_index)
        if self.binary_only and not self.task.binary:
            raise ValueError(
                f"{type(self).__name__} scores the foreground of binary tasks (2 classes), but "
                f"this task has {self.task.num_classes}: leave it out of the metrics for this "
                "dataset (metrics=multiclass)."
            )
        self.add_states()

    def add_states(self) -> None:
        """Declare the metric's states (``self.add_state``)."""


class ConfusionMatrixMetric(TaskMetric):
    """A metric over the whole split's confusion matrix (summed over batches and processes)."""

    def add_states(self) -> None:
        size = self.task.num_classes
        self.add_state("confusion", torch.zeros(size, size, dtype=torch.long), "sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        self.confusion += confusion_matrix(preds, target, self.task.num_classes, self.ignore_index)


class IoU(ConfusionMatrixMetric):
    """Intersection over union: headline (foreground or mean) and one value per class."""

    kind = "iou"

    def compute(self) -> dict[str, torch.Tensor]:
        per_class = class_scores(self.confusion, self.kind)
        return {"": headline(per_class, self.task), **per_class_values(per_class, self.task)}


class Dice(IoU):
    """Dice (F1) coefficient: headline (foreground or mean) and one value per class."""

    kind = "dice"


class PixelAccuracy(ConfusionMatrixMetric):
    """Correctly classified labelled pixels over all labelled pixels."""

    def compute(self) -> torch.Tensor:
        total = self.confusion.sum()
        return self.confusion.trace().double() / total if total else torch.tensor(torch.nan)


class Sensitivity(ConfusionMatrixMetric):
    """Share of the true foreground pixels predicted as foreground (recall), over the split;
    NaN when the split has no foreground."""

    binary_only = True

    def compute(self) -> torch.Tensor:
        return class_recall(self.confusion)[1]


class Specificity(ConfusionMatrixMetric):
    """Share of the true background pixels predicted as background, over the split; NaN when
    the split has no background."""

    binary_only = True

    def compute(self) -> torch.Tensor:
        return class_recall(self.confusion)[0]


class MeanAccuracy(ConfusionMatrixMetric):
    """Per-class accuracy (recall) averaged over the classes in the truth (mmsegmentation's
    mAcc); a class not in the truth has no accuracy and is left out."""

    def compute(self) -> torch.Tensor:
        return class_recall(self.confusion).nanmean()


class FrequencyWeightedIoU(ConfusionMatrixMetric):
    """Each class's IoU weighted by its share of the labelled pixels (FCN's f.w. IU)."""

    def compute(self) -> torch.Tensor:
        true = self.confusion.sum(-1).double()
        if not true.sum():
            return torch.tensor(torch.nan)
        iou = class_scores(self.confusion, "iou").nan_to_num(0.0)  # NaN only where weight is 0
        return (true * iou).sum() / true.sum()


class PerImageMetric(TaskMetric):
    """A value per image, averaged over images (states: every image's value, gathered from all
    processes). An image without a labelled pixel has no value; NaN values are left out."""

    def add_states(self) -> None:
        self.add_state("scores", [], dist_reduce_fx="cat")

    def image_scores(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``[N]``: the value of each image of the batch."""
        raise NotImplementedError

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        labelled = (target != self.ignore_index).flatten(1).any(1)
        self.scores.append(self.image_scores(preds, target)[labelled].double())

    def compute(self) -> torch.Tensor:
        scores = self.scores if isinstance(self.scores, torch.Tensor) else None
        if scores is None:
            scores = torch.cat(self.scores) if self.scores else torch.zeros(0)
        return scores.nanmean() if scores.numel() else torch.tensor(torch.nan)


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


def per_class_values(values: torch.Tensor, task: Task) -> dict[str, torch.Tensor]:
    return {class_key(name): values[..., i] for i, name in enumerate(task.classes)}


def class_key(name: str) -> str:
    """A class name as it appears in metric names (``iou_<class>``)."""
    return str(name).replace(" ", "_")


class MetricSet(nn.Module):
    """The named metrics of a run (``metrics`` config group): update, compute, reset together.

    One set per stage (``val``, ``test``) in training, and one per inference variant in eval:
    the same classes, built from the same config, give the numbers everywhere.
    """

    def __init__(self, metrics: Mapping[str, Metric], task: Task) -> None:
        super().__init__()
        self.task = task
        self.metrics = nn.ModuleDict(dict(metrics))

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds`` and ``target``: [N, H, W] class indices (255 in target = ignore)."""
        for metric in self.metrics.values():
            metric.update(preds, target)

    def forward(self, preds: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
        """Accumulate this batch, and return its own values (e.g. one image's scores)."""
        return {
            name: value
            for key, metric in self.metrics.items()
            for name, value in named_values(key, metric(preds, target), self.task).items()
        }

    def per_image(self, preds: torch.Tensor, target: torch.Tensor) -> list[dict[str, float]]:
        """Accumulate the batch image by image, and return each image's values."""
        return [self(preds[i : i + 1], target[i : i + 1]) for i in range(preds.shape[0])]

    def compute(self) -> dict[str, float]:
        """Every value by name (``iou``, ``iou_lesion``, ...); NaN where there is none."""
        return {
            name: value
            for key, metric in self.metrics.items()
            for name, value in named_values(key, metric.compute(), self.task).items()
        }

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()


def named_values(name: str, value: Any, task: Task) -> dict[str, float]:
    """A metric's ``compute()`` result as ``{metric name: float}`` (see the module docstring)."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            out.update(named_values(f"{name}_{key}" if key else name, item, task))
        return out
    tensor = torch.as_tensor(value).detach()
    if tensor.numel() == 1:
        return {name: float(tensor)}
    if tensor.dim() == 1 and tensor.numel() == task.num_classes:
        return {
            f"{name}_{class_key(c)}": float(v) for c, v in zip(task.classes, tensor, strict=True)
        }
    raise LightsegError(
        f"metrics.{name} returned a tensor of shape {tuple(tensor.shape)}; a metric returns a "
        f"scalar, one value per class ({task.num_classes}), or a dict of scalars."
    )


def build_metrics(config: Mapping[str, Mapping[str, Any] | None], task: Task) -> MetricSet:
    """``{name: {_target_, **options}}`` (the ``metrics`` group) -> MetricSet; null drops one.

    An empty config gives an empty set (a hand-made checkpoint without metrics still loads).
    """
    metrics = {}
    for name, entry in (config or {}).items():
        if entry is None:
            continue
        options = dict(entry)
        if "_target_" not in options:
            raise LightsegError(
                f"metrics.{name} has no _target_: name a torchmetrics Metric class, e.g. "
                f"+metrics.{name}._target_=torchmetrics.classification.MulticlassAccuracy."
            )
        try:
            metric = instantiate(options, **task_arguments(options, task), _convert_="all")
        except InstantiationException as error:
            cause = error.__cause__ or error
            raise LightsegError(
                f"metrics.{name} ({options['_target_']}): {type(cause).__name__}: {cause}"
            ) from None
        if not isinstance(metric, Metric):
            raise LightsegError(
                f"metrics.{name}._target_={options['_target_']} is not a torchmetrics Metric."
            )
        metrics[name] = metric
    return MetricSet(metrics, task)


def finite_or_none(value: float) -> float | None:
    """NaN (no value: e.g. a class absent from the split) as None, for JSON files."""
    return None if isinstance(value, float) and math.isnan(value) else value

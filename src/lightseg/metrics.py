"""Segmentation metrics as torchmetrics ``Metric`` objects, and the named set a run reports.

The metric contract: a torchmetrics ``Metric`` updated with ``(preds, target)``, both
``[N, H, W]`` class indices, ``target`` 255 where pixels are ignored. ``compute()`` returns a
scalar, a vector of one value per class, or a dict of scalars; under the name ``iou`` these are
logged as ``val/iou``, ``val/iou_<class>``, and ``val/iou`` / ``val/iou_<key>`` (key ``""`` is
the metric itself). lightseg fills in ``num_classes``, ``classes`` and ``ignore_index`` for
constructors that take them. States are synced across processes by torchmetrics.

A class that occurs in neither the predictions nor the targets has no IoU or Dice: its value
is NaN (shown empty, written as null) and it is left out of every mean.

Built-in metrics, both for binary tasks (the foreground class is the headline, the PH2/ISIC
convention) and multiclass ones (the mean over classes present, VOC's mIoU):
``IoU``, ``Dice``, ``PixelAccuracy`` (over the whole split) and ``DicePerImage`` (mean over
images; an image where neither prediction nor truth has foreground scores 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
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


def headline(per_class: torch.Tensor, task: Task) -> torch.Tensor:
    """The foreground value (binary) or the mean over classes present (multiclass)."""
    return per_class[..., 1] if task.binary else per_class.nanmean(-1)


class TaskMetric(Metric):
    """A metric that knows the task's classes and the ignore label (filled in by lightseg)."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

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


class ConfusionMatrixMetric(TaskMetric):
    """A metric over the whole split's confusion matrix (summed over batches and processes)."""

    def __init__(self, num_classes: int, classes: list[str] | None = None, **kwargs) -> None:
        super().__init__(num_classes, classes, **kwargs)  # named: lightseg fills in classes
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


class DicePerImage(TaskMetric):
    """Dice of each image, averaged over images (binary: foreground; multiclass: the mean over
    the classes present in that image). An image with no foreground in truth or prediction
    scores 1 (nothing to find, nothing found); one with no labelled pixel does not count."""

    def __init__(self, num_classes: int, classes: list[str] | None = None, **kwargs) -> None:
        super().__init__(num_classes, classes, **kwargs)
        self.add_state("scores", [], dist_reduce_fx="cat")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        confusion = per_image_confusion(preds, target, self.task.num_classes, self.ignore_index)
        scores = headline(class_scores(confusion, "dice"), self.task)
        if self.task.binary:  # nothing to find and nothing found: a perfect image
            scores = torch.where(scores.isnan(), 1.0, scores)
        labelled = confusion.flatten(1).sum(1) > 0
        self.scores.append(scores[labelled].float())

    def compute(self) -> torch.Tensor:
        scores = self.scores if isinstance(self.scores, torch.Tensor) else None
        if scores is None:
            scores = torch.cat(self.scores) if self.scores else torch.zeros(0)
        return scores.nanmean() if scores.numel() else torch.tensor(torch.nan)


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

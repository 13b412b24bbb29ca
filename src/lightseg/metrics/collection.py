"""The metrics a run reports: one torchmetrics ``MetricCollection`` from the ``metrics`` config,
its values by name, and each image's values."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torchmetrics import Metric, MetricCollection

from lightseg import CONFIG_DIR
from lightseg.errors import LightsegError
from lightseg.metrics.base import class_key
from lightseg.metrics.confusion import ConfusionMatrixMetric, per_image_confusion
from lightseg.metrics.per_image import PerImageMetric
from lightseg.task import Task, build_named


def metrics_for(task: Task) -> dict[str, dict[str, Any]]:
    """The set a task reports when the run chooses none: ``configs/metrics/binary.yaml`` for two
    classes, ``multiclass.yaml`` for more."""
    path = Path(CONFIG_DIR) / "metrics" / f"{'binary' if task.binary else 'multiclass'}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path), resolve=True)


def build_metrics(
    config: Mapping[str, Mapping[str, Any] | None] | None, task: Task
) -> MetricCollection:
    """``{name: {_target_, **options}}`` (null drops one; none: :func:`metrics_for`) -> the
    collection. Confusion-matrix metrics of one task share one state (a compute group), named
    here: torchmetrics' own search merges states equal by chance (HD95, ASSD on perfect masks)."""
    metrics = build_named(
        "metrics", config or metrics_for(task), task, Metric, "lightseg.metrics.IoU"
    )
    shared: dict[tuple, list[str]] = {}
    for name, metric in sorted(metrics.items()):
        if isinstance(metric, ConfusionMatrixMetric):
            shared.setdefault((metric.task, metric.ignore_index), []).append(name)
    return MetricCollection(metrics, compute_groups=list(shared.values()))


def metric_values(metrics: MetricCollection, task: Task) -> dict[str, float]:
    """Every value by name, after the collection's prefix (``val/iou``, ``val/iou_lesion``,
    ...: see :func:`named_values`); NaN where there is none."""
    prefix = metrics.prefix or ""
    return {
        f"{prefix}{name}": value
        for key, metric in metrics.items(keep_base=True, copy_state=False)
        for name, value in named_values(key, metric.compute(), task).items()
    }


def update_per_image(
    metrics: MetricCollection, preds: torch.Tensor, target: torch.Tensor, task: Task
) -> list[dict[str, float]]:
    """``metrics.update(preds, target)``, then each image's own values by name (no prefix):
    each image's confusion matrix, the per-image values just stored, or a copy scoring it alone."""
    metrics.update(preds, target)
    images, confusions, columns = range(preds.shape[0]), {}, {}
    for key, metric in metrics.items(keep_base=True, copy_state=False):
        if isinstance(metric, ConfusionMatrixMetric):
            group = (metric.task.num_classes, metric.ignore_index)
            if group not in confusions:  # one count for all; on the CPU, as the floats will be
                confusions[group] = per_image_confusion(preds, target, *group).cpu()
            columns[key] = metric.values(confusions[group])
        elif isinstance(metric, PerImageMetric):
            columns[key] = metric.scores[-1].cpu()  # each image's value, stored just now
        else:
            alone = copy.deepcopy(metric)
            alone.reset()
            columns[key] = [alone(preds[i : i + 1], target[i : i + 1]) for i in images]
    return [
        {
            name: value
            for key, column in columns.items()
            for name, value in named_values(key, image(column, i), task).items()
        }
        for i in images
    ]


def image(values: Any, index: int) -> Any:
    """The values of image ``index`` from a batch's (a tensor, list, or dict of tensors)."""
    return (
        {k: v[index] for k, v in values.items()} if isinstance(values, Mapping) else values[index]
    )


def named_values(name: str, value: Any, task: Task) -> dict[str, float]:
    """A metric's ``compute()`` result as ``{metric name: float}`` (see the package docstring)."""
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


def finite_or_none(value: float) -> float | None:
    """NaN (no value: e.g. a class absent from the split) as None, for JSON files."""
    return None if isinstance(value, float) and math.isnan(value) else value

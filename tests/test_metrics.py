"""Metrics against values computed by hand on small asymmetric cases with ignored pixels."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml
from torchmetrics import Metric

from lightseg import CONFIG_DIR
from lightseg.errors import LightsegError
from lightseg.metrics import build_metrics, named_values
from lightseg.task import IGNORE_INDEX, Task

X = IGNORE_INDEX
BINARY, MULTI = Task(("background", "lesion")), Task(("bg", "cat", "dog"))


def metrics_config(kind: str) -> dict:
    """The metrics group option as the configs define it."""
    return yaml.safe_load((Path(CONFIG_DIR) / "metrics" / f"{kind}.yaml").read_text())


def computed(task: Task, preds, target, config=None) -> dict[str, float]:
    config = config or metrics_config("binary" if task.binary else "multiclass")
    metrics = build_metrics(config, task)
    metrics.update(torch.tensor(preds), torch.tensor(target))
    return metrics.compute()


def test_binary_foreground_scores_and_per_image_dice():
    target = [[[1, 1, 0], [0, 0, X]], [[1, 1, 1], [1, 0, 0]]]
    preds = [[[1, 0, 0], [1, 1, 1]], [[1, 1, 1], [0, 0, 0]]]
    # image 1: TP 1, FN 1, FP 2, TN 1 (the ignored pixel predicted 1 does not count)
    # image 2: TP 3, FN 1, FP 0, TN 2           -> global TP 4, FN 2, FP 2, TN 3
    values = computed(BINARY, preds, target)
    expected = {
        "iou": 4 / 8,
        "dice": 8 / 12,
        "iou_lesion": 4 / 8,
        "dice_lesion": 8 / 12,
        "iou_background": 3 / 7,  # TP 3, FP 2 (missed lesion), FN 2 (false lesion)
        "dice_background": 6 / 10,
        "dice_per_image": (2 / 5 + 6 / 7) / 2,
        "acc": 7 / 11,
    }
    assert values == pytest.approx(expected, abs=1e-6)


def test_multiclass_mean_over_classes_and_per_class():
    target = [[[0, 0, 1, 1], [0, 2, 1, X], [2, 2, X, 1]]]
    preds = [[[0, 1, 1, 1], [0, 2, 2, 1], [2, 1, 2, 1]]]
    # class 0: TP 2, FN 1, FP 0 | class 1: TP 3, FN 1, FP 2 | class 2: TP 2, FN 1, FP 1
    values = computed(MULTI, preds, target)
    iou = {"bg": 2 / 3, "cat": 3 / 6, "dog": 2 / 4}
    dice = {"bg": 4 / 5, "cat": 6 / 9, "dog": 4 / 6}
    expected = {f"iou_{k}": v for k, v in iou.items()} | {f"dice_{k}": v for k, v in dice.items()}
    expected |= {"iou": sum(iou.values()) / 3, "dice": sum(dice.values()) / 3, "acc": 7 / 10}
    assert values == pytest.approx(expected, abs=1e-6)


def test_prediction_on_an_ignored_pixel_does_not_count():
    target = [[[1, 1, 0], [0, 0, X]]]
    assert computed(BINARY, [[[1, 0, 0], [1, 1, 1]]], target) == computed(
        BINARY, [[[1, 0, 0], [1, 1, 0]]], target
    )


def test_absent_class_has_no_value_and_is_left_out_of_the_mean():
    values = computed(Task(("bg", "a", "b")), [[[0, 1], [1, 0]]], [[[0, 1], [0, 0]]])
    # class b is in neither prediction nor truth: mean IoU over bg (2/3) and a (1/2) only
    assert values["iou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert math.isnan(values["iou_b"]) and math.isnan(values["dice_b"])
    # a class only predicted (never true) counts, with IoU 0
    only_predicted = computed(Task(("bg", "a", "b")), [[[0, 2]]], [[[0, 0]]])
    assert only_predicted["iou_b"] == 0.0 and only_predicted["iou"] == pytest.approx(0.25)


def test_dice_per_image_scores_empty_images_and_skips_unlabelled_ones():
    target = [[[0, 0], [0, 0]], [[X, X], [X, X]], [[1, 1], [0, 0]]]
    preds = [[[0, 0], [0, 0]], [[1, 1], [1, 1]], [[1, 0], [0, 0]]]
    # nothing to find and nothing found: 1; no labelled pixel: not counted; 2*1/(1+2) = 2/3
    values = computed(BINARY, preds, target)
    assert values["dice_per_image"] == pytest.approx((1 + 2 / 3) / 2)


def test_accumulates_over_batches_and_resets():
    metrics = build_metrics(metrics_config("binary"), BINARY)
    metrics.update(torch.tensor([[[1, 0]]]), torch.tensor([[[1, 1]]]))
    metrics.update(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 0]]]))
    assert metrics.compute()["iou"] == pytest.approx(2 / 4)
    metrics.reset()
    metrics.update(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 1]]]))
    assert metrics.compute()["iou"] == 1.0


def test_calling_the_set_gives_this_batchs_values_and_accumulates():
    metrics = build_metrics(metrics_config("binary"), BINARY)
    first = metrics(torch.tensor([[[1, 0]]]), torch.tensor([[[1, 1]]]))
    second = metrics(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 1]]]))
    assert first["dice"] == pytest.approx(2 / 3) and second["dice"] == 1.0
    assert metrics.compute()["dice"] == pytest.approx(2 * 3 / (3 + 4))


def test_a_torchmetrics_metric_from_config_gets_the_task_filled_in():
    config = {
        **metrics_config("multiclass"),
        "jaccard_tm": {
            "_target_": "torchmetrics.classification.MulticlassJaccardIndex",
            "average": "none",
        },
        "acc_macro": {"_target_": "torchmetrics.classification.MulticlassAccuracy"},
    }
    target = [[[0, 0, 1, 1], [0, 2, 1, X], [2, 2, X, 1]]]
    preds = [[[0, 1, 1, 1], [0, 2, 2, 1], [2, 1, 2, 1]]]
    values = computed(MULTI, preds, target, config)
    for name in MULTI.classes:  # a vector of one value per class is named per class
        assert values[f"jaccard_tm_{name}"] == pytest.approx(values[f"iou_{name}"], abs=1e-6)
    assert values["acc_macro"] == pytest.approx((2 / 3 + 3 / 4 + 2 / 3) / 3, abs=1e-6)


def test_named_values_accepts_scalars_vectors_and_dicts_only():
    assert named_values("m", torch.tensor(0.5), BINARY) == {"m": 0.5}
    assert named_values("m", {"": 1.0, "x": 2.0}, BINARY) == {"m": 1.0, "m_x": 2.0}
    assert named_values("m", torch.tensor([0.1, 0.2]), BINARY) == pytest.approx(
        {"m_background": 0.1, "m_lesion": 0.2}
    )
    with pytest.raises(LightsegError, match="shape"):
        named_values("m", torch.zeros(3, 3), BINARY)


class NotAMetric:
    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes


def test_bad_metric_configs_are_clear_errors():
    with pytest.raises(LightsegError, match=r"metrics\.x has no _target_"):
        build_metrics({"x": {"average": "macro"}}, BINARY)
    with pytest.raises(LightsegError, match="is not a torchmetrics Metric"):
        build_metrics({"x": {"_target_": f"{__name__}.NotAMetric"}}, BINARY)
    assert issubclass(type(build_metrics(metrics_config("binary"), BINARY).metrics["iou"]), Metric)


def test_built_in_metrics_take_the_class_names_lightseg_fills_in():
    import inspect

    for name, entry in metrics_config("binary").items():
        metric_class = build_metrics({name: entry}, BINARY).metrics[name].__class__
        parameters = inspect.signature(metric_class).parameters
        assert {"num_classes", "classes", "ignore_index"} <= parameters.keys(), name

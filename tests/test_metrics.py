"""Metrics against values computed by hand on small asymmetric cases with ignored pixels."""

from __future__ import annotations

import pytest
import torch

from lightseg.metrics import SegmentationMetrics
from lightseg.task import IGNORE_INDEX, Task

X = IGNORE_INDEX


def computed(task: Task, preds, target) -> dict[str, float]:
    metrics = SegmentationMetrics(task)
    metrics.update(torch.tensor(preds), torch.tensor(target))
    return {k: v.item() for k, v in metrics.compute().items()}


def test_binary_foreground_scores_and_per_image_dice():
    target = [[[1, 1, 0], [0, 0, X]], [[1, 1, 1], [1, 0, 0]]]
    preds = [[[1, 0, 0], [1, 1, 1]], [[1, 1, 1], [0, 0, 0]]]
    # image 1: TP 1, FN 1, FP 2, TN 1 (the ignored pixel predicted 1 does not count)
    # image 2: TP 3, FN 1, FP 0, TN 2           -> global TP 4, FN 2, FP 2, TN 3
    values = computed(Task(("background", "lesion")), preds, target)
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
    values = computed(Task(("bg", "cat", "dog")), preds, target)
    iou = {"bg": 2 / 3, "cat": 3 / 6, "dog": 2 / 4}
    dice = {"bg": 4 / 5, "cat": 6 / 9, "dog": 4 / 6}
    expected = {f"iou_{k}": v for k, v in iou.items()} | {f"dice_{k}": v for k, v in dice.items()}
    expected |= {"iou": sum(iou.values()) / 3, "dice": sum(dice.values()) / 3, "acc": 7 / 10}
    assert values == pytest.approx(expected, abs=1e-6)


def test_prediction_on_an_ignored_pixel_does_not_count():
    task = Task(("background", "lesion"))
    target = [[[1, 1, 0], [0, 0, X]]]
    assert computed(task, [[[1, 0, 0], [1, 1, 1]]], target) == computed(
        task, [[[1, 0, 0], [1, 1, 0]]], target
    )


def test_absent_class_is_left_out_of_the_mean():
    values = computed(Task(("bg", "a", "b")), [[[0, 1], [1, 0]]], [[[0, 1], [0, 0]]])
    # class b never occurs: mean IoU over bg (2/3) and a (1/2) only
    assert values["iou"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_accumulates_over_batches_and_resets():
    task = Task(("background", "lesion"))
    metrics = SegmentationMetrics(task)
    metrics.update(torch.tensor([[[1, 0]]]), torch.tensor([[[1, 1]]]))
    metrics.update(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 0]]]))
    assert metrics.compute()["iou"].item() == pytest.approx(2 / 4)
    metrics.reset()
    metrics.update(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 1]]]))
    assert metrics.compute()["iou"].item() == 1.0

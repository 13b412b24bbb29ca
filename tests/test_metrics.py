"""Metrics against values computed by hand on small asymmetric cases with ignored pixels."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn
from torchmetrics import Metric

from lightseg import CONFIG_DIR
from lightseg.errors import LightsegError
from lightseg.metrics import (
    build_metrics,
    confusion,
    metric_values,
    metrics_for,
    named_values,
    update_per_image,
)
from lightseg.runs.per_image import read_per_image, write_per_image
from lightseg.task import IGNORE_INDEX, Task
from lightseg.train import train
from tests.conftest import ONE_STEP, make_config

X = IGNORE_INDEX
BINARY, MULTI = Task(("background", "lesion")), Task(("bg", "cat", "dog"))


def metrics_config(kind: str) -> dict:
    """The metrics group option as the configs define it."""
    return yaml.safe_load((Path(CONFIG_DIR) / "metrics" / f"{kind}.yaml").read_text())


def computed(task: Task, preds, target, config=None) -> dict[str, float]:
    config = config or metrics_config("binary" if task.binary else "multiclass")
    metrics = build_metrics(config, task)
    metrics.update(torch.tensor(preds), torch.tensor(target))
    return metric_values(metrics, task)


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
        "sensitivity": 4 / 6,  # TP / (TP + FN)
        "specificity": 3 / 5,  # TN / (TN + FP)
        "jaccard_thresholded": (0 + 3 / 4) / 2,  # IoU 1/4 < 0.65 counts 0; 3/4 counts
        # Every pixel of a 2-row image is a boundary pixel. Image 1 (the ignored pixel's
        # prediction dropped): prediction -> truth distances [0, 1, 1], truth -> prediction
        # [0, 1]. Image 2: [0, 0, 0] and [0, 0, 0, 1], whose 95th percentile (linear, as numpy
        # and MONAI) is 0.85.
        "hd95": (1 + 0.85) / 2,
        "assd": (3 / 5 + 1 / 7) / 2,
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
    expected["mean_acc"] = (2 / 3 + 3 / 4 + 2 / 3) / 3  # each class's recall, averaged
    expected["fwiou"] = (3 * 2 / 3 + 4 * 3 / 6 + 3 * 2 / 4) / 10  # weights: 3, 4, 3 true pixels
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
    assert values["mean_acc"] == pytest.approx((2 / 3 + 1) / 2)
    assert values["fwiou"] == pytest.approx((3 * 2 / 3 + 1 * 1 / 2) / 4)
    # a class only predicted (never true) counts, with IoU 0; it has no accuracy (no truth)
    only_predicted = computed(Task(("bg", "a", "b")), [[[0, 2]]], [[[0, 0]]])
    assert only_predicted["iou_b"] == 0.0 and only_predicted["iou"] == pytest.approx(0.25)
    assert only_predicted["mean_acc"] == 0.5 and only_predicted["fwiou"] == 0.5


def test_dice_per_image_scores_empty_images_and_skips_unlabelled_ones():
    target = [[[0, 0], [0, 0]], [[X, X], [X, X]], [[1, 1], [0, 0]]]
    preds = [[[0, 0], [0, 0]], [[1, 1], [1, 1]], [[1, 0], [0, 0]]]
    # nothing to find and nothing found: 1; no labelled pixel: not counted; 2*1/(1+2) = 2/3
    values = computed(BINARY, preds, target)
    assert values["dice_per_image"] == pytest.approx((1 + 2 / 3) / 2)


def one_metric(target: str, task: Task = BINARY, **options):
    return build_metrics({"m": {"_target_": f"lightseg.metrics.{target}", **options}}, task)


def score(target: str, preds, truth, **options) -> float:
    metric = one_metric(target, **options)
    metric.update(torch.as_tensor(preds), torch.as_tensor(truth))
    return metric_values(metric, BINARY)["m"]


def blank(height: int, width: int) -> torch.Tensor:
    return torch.zeros(1, height, width, dtype=torch.long)


def test_hd95_and_assd_by_hand_on_a_non_square_image():
    # Two 2-pixel-high boxes (every pixel is a boundary pixel), 4 x 9 image: columns 1-2
    # predicted, 5-7 true. prediction -> truth: 4, 3, 4, 3; truth -> prediction: 3, 4, 5 (x2).
    preds, truth = blank(4, 9), blank(4, 9)
    preds[0, 1:3, 1:3] = 1
    truth[0, 1:3, 5:8] = 1
    assert score("HD95", preds, truth) == pytest.approx(5.0)  # max(p95 of 3,3,4,4 = 4; 5)
    assert score("ASSD", preds, truth) == pytest.approx((14 + 24) / 10)
    # an outlier: one far predicted pixel moves ASSD, not the 95th percentile
    preds, truth = blank(11, 20), blank(11, 20)
    truth[0, 0, :] = 1
    preds[0, 0, :] = 1
    preds[0, 10, 0] = 1  # 10 pixels below the line: 21 distances [0] * 20 + [10]
    assert score("HD95", preds, truth) == 0.0
    assert score("HD95", preds, truth, percentile=100) == pytest.approx(10.0)  # plain Hausdorff
    assert score("ASSD", preds, truth) == pytest.approx(10 / 41)


def test_boundary_distances_of_empty_masks_follow_the_stated_rule():
    lesion = blank(6, 8)
    lesion[0, 2:4, 2:5] = 1
    diagonal = math.hypot(6, 8)  # 10: the largest distance in a 6 x 8 image
    for name in ("HD95", "ASSD"):
        assert score(name, blank(6, 8), lesion) == pytest.approx(diagonal)  # lesion missed
        assert score(name, lesion, blank(6, 8)) == pytest.approx(diagonal)  # lesion invented
        assert score(name, blank(6, 8), blank(6, 8)) == 0.0  # nothing to find, nothing found
        ignored = torch.full((1, 6, 8), X)
        assert math.isnan(score(name, lesion, ignored))  # no labelled pixel: no value
        # a prediction on ignored pixels counts as background: still a perfect image
        truth = lesion.clone()
        truth[0, 5, :] = X
        preds = lesion.clone()
        preds[0, 5, :] = 1
        assert score(name, preds, truth) == 0.0


def test_boundary_distances_equal_monais():
    monai = pytest.importorskip("monai.metrics")
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):  # random blobs on non-square images
        shape = (1, 1, 23, 37)
        noise = torch.rand(shape, generator=generator)
        blur = torch.nn.functional.avg_pool2d(noise, 5, stride=1, padding=2)
        preds = (blur > 0.52).long()[0]
        truth = (torch.roll(blur, 3, dims=3) > 0.5).long()[0]
        one_hot = [torch.nn.functional.one_hot(x, 2).permute(0, 3, 1, 2) for x in (preds, truth)]
        hd95 = monai.compute_hausdorff_distance(*one_hot, percentile=95)
        assd = monai.compute_average_surface_distance(*one_hot, symmetric=True)
        assert 0 < float(assd) < float(hd95) < 20  # two real, different blobs
        assert score("HD95", preds, truth) == pytest.approx(float(hd95), abs=1e-5)
        assert score("ASSD", preds, truth) == pytest.approx(float(assd), abs=1e-5)


def test_thresholded_jaccard_counts_images_below_the_threshold_as_zero():
    preds, truth = blank(1, 10).repeat(4, 1, 1), blank(1, 10).repeat(4, 1, 1)
    truth[:3, 0, :5] = 1
    preds[0, 0, :5] = 1  # IoU 1
    preds[1, 0, :4] = 1  # IoU 4/5 = 0.8
    preds[2, 0, :3] = 1  # IoU 3/5 = 0.6 < 0.65: 0
    # image 3: nothing to find, nothing found: 1
    assert score("JaccardThresholded", preds, truth) == pytest.approx((1 + 0.8 + 0 + 1) / 4)
    assert score("JaccardThresholded", preds, truth, threshold=0.5) == pytest.approx(
        (1 + 0.8 + 0.6 + 1) / 4
    )


def test_sensitivity_and_specificity_have_no_value_without_their_class():
    assert math.isnan(score("Sensitivity", [[[1, 0]]], [[[0, 0]]]))  # no true foreground
    assert math.isnan(score("Specificity", [[[1, 0]]], [[[1, 1]]]))  # no true background
    assert score("Specificity", [[[1, 0]]], [[[0, 0]]]) == 0.5


def test_binary_only_metrics_refuse_a_multiclass_task():
    for name in ("Sensitivity", "Specificity", "HD95", "ASSD"):
        with pytest.raises(LightsegError, match=rf"metrics\.m .*{name} scores the foreground"):
            one_metric(name, MULTI)


def test_per_image_values_are_each_images_own_and_accumulate():
    metrics = build_metrics(metrics_config("binary"), BINARY)
    preds = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]]])
    target = torch.tensor([[[1, 0, 0, 0]], [[1, 1, 0, 0]]])
    first, second = update_per_image(metrics, preds, target, BINARY)
    assert first["dice"] == pytest.approx(2 / 3) and first["hd95"] == pytest.approx(0.95)
    assert second["dice"] == 0.0 and second["hd95"] == pytest.approx(math.hypot(1, 4))
    assert first["specificity"] == pytest.approx(2 / 3) and second["sensitivity"] == 0.0
    total = metric_values(metrics, BINARY)
    assert total["dice"] == pytest.approx(2 * 1 / (2 + 3))  # pooled over both images
    assert total["hd95"] == pytest.approx((0.95 + math.hypot(1, 4)) / 2)


def test_accumulates_over_batches_and_resets():
    metrics = build_metrics(metrics_config("binary"), BINARY)
    metrics.update(torch.tensor([[[1, 0]]]), torch.tensor([[[1, 1]]]))
    metrics.update(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 0]]]))
    assert metric_values(metrics, BINARY)["iou"] == pytest.approx(2 / 4)
    metrics.reset()
    metrics.update(torch.tensor([[[1, 1]]]), torch.tensor([[[1, 1]]]))
    assert metric_values(metrics, BINARY)["iou"] == 1.0


def test_scoring_one_image_gives_its_values_and_accumulates():
    metrics = build_metrics(metrics_config("binary"), BINARY)
    (first,) = update_per_image(metrics, torch.tensor([[[1, 0]]]), torch.tensor([[[1, 1]]]), BINARY)
    (second,) = update_per_image(
        metrics, torch.tensor([[[1, 1]]]), torch.tensor([[[1, 1]]]), BINARY
    )
    assert first["dice"] == pytest.approx(2 / 3) and second["dice"] == 1.0
    assert metric_values(metrics, BINARY)["dice"] == pytest.approx(2 * 3 / (3 + 4))


def test_confusion_metrics_share_one_matrix_counted_once_per_batch(monkeypatch):
    metrics = build_metrics(metrics_config("binary"), BINARY)
    shared = ["acc", "dice", "iou", "sensitivity", "specificity"]
    assert sorted(metrics.compute_groups.values()) == sorted(
        [shared, ["assd"], ["dice_per_image"], ["hd95"], ["jaccard_thresholded"]]
    )
    multiclass = build_metrics(metrics_config("multiclass"), MULTI).compute_groups
    assert list(multiclass.values()) == [["acc", "dice", "fwiou", "iou", "mean_acc"]]
    counted = []
    count = confusion.confusion_matrix
    monkeypatch.setattr(confusion, "confusion_matrix", lambda *a: counted.append(1) or count(*a))
    # the hand-computed case of test_binary_foreground_scores_and_per_image_dice, in 2 batches
    metrics.update(torch.tensor([[[1, 0, 0], [1, 1, 1]]]), torch.tensor([[[1, 1, 0], [0, 0, X]]]))
    metrics.update(torch.tensor([[[1, 1, 1], [0, 0, 0]]]), torch.tensor([[[1, 1, 1], [1, 0, 0]]]))
    assert len(counted) == 2  # once per batch, for all five
    members = dict(metrics.items(keep_base=True, copy_state=False))
    assert len({id(members[name].confusion) for name in shared}) == 1  # one tensor
    assert members["iou"].confusion.tolist() == [[3, 2], [2, 4]]  # rows: truth
    values = metric_values(metrics, BINARY)
    assert values["iou"] == pytest.approx(4 / 8) and values["acc"] == pytest.approx(7 / 11)
    assert values["sensitivity"] == pytest.approx(4 / 6)
    assert values["specificity"] == pytest.approx(3 / 5)


def test_per_image_metrics_equal_by_chance_on_a_first_batch_keep_their_own_states():
    # torchmetrics' own grouping would merge HD95 and ASSD after a perfect first batch (both 0)
    metrics = build_metrics(
        {name: {"_target_": f"lightseg.metrics.{name.upper()}"} for name in ("hd95", "assd")},
        BINARY,
    )
    perfect = blank(4, 9)
    perfect[0, 1:3, 1:3] = 1
    metrics.update(perfect, perfect)
    preds, truth = blank(4, 9), blank(4, 9)  # the case of test_hd95_and_assd_by_hand...
    preds[0, 1:3, 1:3] = 1
    truth[0, 1:3, 5:8] = 1
    metrics.update(preds, truth)
    values = metric_values(metrics, BINARY)
    assert values["hd95"] == pytest.approx(5.0 / 2) and values["assd"] == pytest.approx(3.8 / 2)


def test_stage_clones_are_named_by_their_prefix_and_count_apart():
    metrics = build_metrics(metrics_config("binary"), BINARY)
    val, test = metrics.clone(prefix="val/"), metrics.clone(prefix="test/")
    val.update(torch.tensor([[[1, 0]]]), torch.tensor([[[1, 1]]]))
    (image,) = update_per_image(test, torch.tensor([[[1, 1]]]), torch.tensor([[[1, 1]]]), BINARY)
    logged = metric_values(val, BINARY)
    assert logged["val/dice"] == pytest.approx(2 / 3) and logged["val/iou_lesion"] == 0.5
    assert logged["val/dice_per_image"] == pytest.approx(2 / 3)
    assert set(logged) == {f"val/{name}" for name in image}  # per image: without the prefix
    assert metric_values(test, BINARY)["test/dice"] == 1.0 == image["dice"]


def test_any_metrics_per_image_values_are_its_value_on_each_image_alone():
    config = {
        "iou": {"_target_": "lightseg.metrics.IoU"},
        "acc_tm": {
            "_target_": "torchmetrics.classification.MulticlassAccuracy",
            "average": "micro",
        },
    }
    metrics = build_metrics(config, MULTI)
    target = [[[0, 0, 1, 1], [0, 2, 1, X], [2, 2, X, 1]], [[1, 1, 2, 2], [1, 1, 2, 2], [X] * 4]]
    preds = [[[0, 1, 1, 1], [0, 2, 2, 1], [2, 1, 2, 1]], [[1, 1, 2, 1], [1, 1, 2, 2], [0] * 4]]
    first, second = update_per_image(metrics, torch.tensor(preds), torch.tensor(target), MULTI)
    assert first["acc_tm"] == pytest.approx(7 / 10) and second["acc_tm"] == pytest.approx(7 / 8)
    assert first["iou"] == pytest.approx((2 / 3 + 3 / 6 + 2 / 4) / 3)
    # image 2: class bg only predicted on ignored pixels: no value, left out of its mean
    assert math.isnan(second["iou_bg"]) and second["iou_cat"] == pytest.approx(4 / 5)
    assert second["iou"] == pytest.approx((4 / 5 + 3 / 4) / 2)
    total = metric_values(metrics, MULTI)  # the batch counted once, not once more per image
    assert total["acc_tm"] == pytest.approx(14 / 18)
    assert total["iou_dog"] == pytest.approx(5 / 8)  # TP 2 + 3; FN 1 + 1; FP 1 + 0


def test_the_metric_set_follows_the_task_unless_one_is_chosen():
    assert metrics_for(BINARY) == metrics_config("binary")
    assert metrics_for(MULTI) == metrics_config("multiclass")
    assert list(metrics_for(Task(("a", "b", "c", "d")))) == list(metrics_config("multiclass"))
    for task, kind in ((BINARY, "binary"), (MULTI, "multiclass")):
        for nothing in (None, {}):
            assert set(build_metrics(nothing, task).keys()) == set(metrics_config(kind))
    # an explicit choice wins, and the binary set on three classes stays a clear error
    with pytest.raises(LightsegError, match=r"metrics\.sensitivity .*binary tasks"):
        build_metrics(metrics_config("binary"), MULTI)


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


def test_per_image_csv_keeps_six_decimals_and_empty_for_no_value(tmp_path):
    path = tmp_path / "per_image.csv"
    rows = [
        {"id": "a", "variant": "plain", "dice": 2 / 3, "hd95": math.nan},
        {"id": "a", "variant": "tta", "dice": 0.5, "hd95": 1.0},
        {"id": "b", "variant": "plain", "dice": None, "iou_lesion": 1},  # a column of its own
    ]
    write_per_image(path, rows)
    assert path.read_text().splitlines() == [
        "id,variant,dice,hd95,iou_lesion",
        "a,plain,0.666667,,",
        "a,tta,0.500000,1.000000,",
        "b,plain,,,1",
    ]
    plain = read_per_image(path, "test/", variant="plain")
    assert plain["test/dice"]["a"] == 0.666667 and math.isnan(plain["test/dice"]["b"])
    assert math.isnan(plain["test/hd95"]["a"]) and plain["test/iou_lesion"] == {
        "a": pytest.approx(math.nan, nan_ok=True),
        "b": 1.0,
    }
    assert read_per_image(path, "", variant="tta")["hd95"] == {"a": 1.0}
    assert read_per_image(tmp_path / "missing.csv", "test/") == {}


class NotAMetric:
    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes


def test_bad_metric_configs_are_clear_errors():
    with pytest.raises(LightsegError, match=r"metrics\.x has no _target_"):
        build_metrics({"x": {"average": "macro"}}, BINARY)
    with pytest.raises(LightsegError, match="is not a torchmetrics Metric"):
        build_metrics({"x": {"_target_": f"{__name__}.NotAMetric"}}, BINARY)
    assert issubclass(type(build_metrics(metrics_config("binary"), BINARY)["iou"]), Metric)


class Background(nn.Module):
    """Predicts class 0 everywhere (its one parameter gives the optimizer something to do)."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("lead", torch.nn.functional.one_hot(torch.tensor(0), out_channels))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = (self.bias + 10 * self.lead).view(1, -1, 1, 1)
        return logits.expand(images.shape[0], -1, *images.shape[2:])


def test_training_reports_a_class_absent_from_truth_and_prediction_as_empty(tmp_path, data_dir):
    cfg = make_config(
        tmp_path,
        "experiment=voc_unet",
        "model=custom",
        f"model._target_={__name__}.Background",
        "trainer.fast_dev_run=true",
        "trainer.accelerator=cpu",
        "logger=none",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.image_size=[64,64]",
        data_dir=data_dir,
    )
    metrics = train(cfg)
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # only background is predicted: a class in no target of the batch has no value at all
    absent = [k for k, v in saved.items() if k.startswith("val/iou_") and v is None]
    present = [k for k, v in saved.items() if k.startswith("val/iou_") and v is not None]
    assert absent and "val/iou_background" in present
    assert all(metrics[k] is None for k in absent)  # not 0.0
    assert saved["val/iou"] == pytest.approx(statistics.fmean(saved[k] for k in present))
    rows = list(csv.DictReader((tmp_path / "run" / "per_image.csv").open()))
    assert rows and all(row[absent[0].replace("val/", "")] == "" for row in rows)


def test_a_three_class_folder_reports_the_multiclass_set_without_naming_one(tmp_path):
    root = tmp_path / "three"
    for seed in range(8):  # index masks 0..2 (a, b, c) with an ignored border
        label = np.zeros((24, 28), np.uint8)
        label[12:, :] = 1
        label[2 + seed : 9 + seed, 4:15] = 2
        label[:, -2:] = 255
        for folder, pixels in (("images", label[..., None].repeat(3, 2) * 60), ("masks", label)):
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / folder / f"case_{seed}.png")
    cfg = make_config(
        tmp_path,
        "data=folder",
        f"data.source.root={root}",
        "data.source.classes=[a,b,c]",
        # a metric added to the task's set (a torchmetrics one: micro accuracy = acc)
        "+metrics.acc_tm._target_=torchmetrics.classification.MulticlassAccuracy",
        "+metrics.acc_tm.average=micro",
        *ONE_STEP,
        "model=unet_resnet18",
        "data.image_size=32",
    )
    metrics = train(cfg)
    per_class = [f"{m}_{c}" for m in ("iou", "dice") for c in "abc"]
    names = {"loss", "iou", "dice", "acc", "mean_acc", "fwiou", "acc_tm", *per_class}
    assert {k for k in metrics if k.startswith("val/")} == {f"val/{n}" for n in names}
    for stage in ("val", "test"):
        assert metrics[f"{stage}/acc_tm"] == pytest.approx(metrics[f"{stage}/acc"], abs=1e-6)
        present = [
            metrics[f"{stage}/iou_{c}"] for c in "abc" if metrics[f"{stage}/iou_{c}"] is not None
        ]
        assert metrics[f"{stage}/iou"] == pytest.approx(statistics.fmean(present))
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    stored = checkpoint["hyper_parameters"]["metrics"]  # the concrete set, for eval
    assert stored == {**metrics_config("multiclass"), "acc_tm": stored["acc_tm"]}
    assert stored["acc_tm"]["average"] == "micro"

"""recipe=auto: the fingerprint of a training split, the plan made from it, and how the plan
meets the command line (its overrides below the user's) and a run (plan.yaml, protocol card)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.utils import instantiate
from PIL import Image

from lightseg.data.demo import Demo, hard_case
from lightseg.errors import LightsegError
from lightseg.models.network import check_network
from lightseg.recipe import Fingerprint, fingerprint, network_info, plan, with_plan
from tests.conftest import make_config
from tests.runs import run_cli, tiny_cli_run

BUDGET = {"steps": 1000, "memory_gb": 8, "max_side": 512}
#: train: two 40x60 and two 80x120 16-bit images; val and test one each
CASES = {"a": 1, "b": 1, "c": 2, "d": 2, "e": 1, "f": 2}
SPLITS = {"train": "abcd", "val": "e", "test": "f"}


def write_16bit_folder(root: Path) -> Path:
    """Grayscale 16-bit images, left half 1000, right half 3000; foreground exactly 2 %."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "splits").mkdir()
    for case, k in CASES.items():
        height, width = 40 * k, 60 * k
        image = np.full((height, width), 1000, np.uint16)
        image[:, width // 2 :] = 3000
        mask = np.zeros((height, width), np.uint8)
        mask[: 4 * k, : 12 * k] = 255  # 48 k^2 of 2400 k^2 pixels
        Image.fromarray(image).save(root / "images" / f"{case}.png")
        Image.fromarray(mask).save(root / "masks" / f"{case}.png")
    for split, cases in SPLITS.items():
        (root / "splits" / f"{split}.txt").write_text("\n".join(cases))
    return root


@pytest.fixture(scope="module")
def gray16(tmp_path_factory) -> Fingerprint:
    root = write_16bit_folder(tmp_path_factory.mktemp("gray16") / "data")
    cfg = make_config(
        root.parent,
        "data=folder",
        f"data.source.root={root}",
        "data.source.in_channels=1",
        "data.mean=auto",
        "data.std=auto",
    )
    return fingerprint(instantiate(cfg.data, _convert_="all"))


def test_fingerprint_of_a_16bit_grayscale_folder(gray16):
    assert gray16.images == 4 and gray16.channels == 1 and gray16.dtype == "uint16"
    assert gray16.size_median == [60, 90]  # medians of 40, 40, 80, 80 and 60, 60, 120, 120
    assert gray16.size_range == [[40, 60], [80, 120]]
    assert gray16.aspect_range == [1.5, 1.5]
    assert gray16.percentiles == [[round(1000 / 65535, 5), round(3000 / 65535, 5)]]
    assert gray16.mean == pytest.approx([2000 / 65535], abs=1e-6)
    assert gray16.std == pytest.approx([1000 / 65535], abs=1e-6)
    assert gray16.shares == [0.98, 0.02] and gray16.presence == [1.0, 1.0]
    assert gray16.foreground == [0.02, 0.02, 0.02]
    assert gray16.source == "Folder" and gray16.orientation_free is False
    assert gray16.duplicates is None  # make data never hashed it


def test_plan_of_a_16bit_grayscale_folder(gray16):
    lines = {e["key"]: e["value"] for e in plan(gray16, BUDGET, {"input_multiple": 32})}
    assert lines["data.image_size"] == [64, 96]  # 60x90 rounded to multiples of 32, aspect kept
    assert lines["data/transforms"] == "resize_hflip_bands"  # no colour jitter on 1 channel
    # robust scaling: the 0.5 and 99.5 percentiles (1000 and 3000 of 65535) map to -1 and 1
    assert lines["data.mean"] == [round(2000 / 65535, 5)]
    assert lines["data.std"] == [round(1000 / 65535, 5)]
    assert lines["data.clip"] == 1.0  # beyond the percentiles: clipped, not only scaled
    assert lines["loss.ce.term.pos_weight"] == 7.0  # sqrt(0.98 / 0.02), foreground skewed 49x
    assert lines["data.batch_size"] == 2  # no GPU: 8, but at most images / 4 = 1 -> at least 2
    assert lines["trainer.max_epochs"] == 500  # 1000 steps at 4 // 2 = 2 steps per epoch
    assert lines["optimizer.lr"] == 0.001  # 2e-3 x sqrt(2 / 8)


def rgb(**changes) -> Fingerprint:
    """An 8-bit RGB split of 400 images (overridden by ``changes``)."""
    base = Fingerprint(
        source="PH2",
        images=400,
        size_median=[576, 766],
        size_range=[[560, 760], [576, 768]],
        aspect_range=[1.33, 1.36],
        channels=3,
        dtype="uint8",
        mean=[0.7, 0.6, 0.5],
        std=[0.2, 0.2, 0.2],
        percentiles=[[0.1, 0.9]] * 3,
        classes=["background", "lesion"],
        shares=[0.8, 0.2],
        presence=[1.0, 1.0],
        foreground=[0.1, 0.2, 0.4],
        duplicates=0,
        orientation_free=True,
    )
    return dataclasses.replace(base, **changes)


def test_plan_of_rgb_data_by_orientation_sizes_and_classes():
    memory = {"input_multiple": 32, "gb_per_image": 0.5, "gb_fixed": 1.0}
    lines = {e["key"]: e["value"] for e in plan(rgb(), BUDGET, memory)}
    assert lines["data.image_size"] == [384, 512]  # 576x766 x 512/766, multiples of 32
    assert lines["data/transforms"] == "resize_flip"  # dermoscopy: no up
    assert lines["data.mean"] == [0.7, 0.6, 0.5] and "loss.ce.term.pos_weight" not in lines
    assert "data.clip" not in lines  # 8-bit: mean/std, nothing clipped
    # 0.5 GB per 256^2 image -> 1.5 GB at 384x512: (8 - 1) / 1.5 = 4.67 -> 4
    assert lines["data.batch_size"] == 4
    assert lines["trainer.max_epochs"] == 10  # ceil(1000 / (400 // 4))
    upright = {e["key"]: e["value"] for e in plan(rgb(orientation_free=False), BUDGET, memory)}
    assert upright["data/transforms"] == "resize_hflip"
    # VOC-like: sizes differ 5x in area and 21 classes, one of them rare -> crops, class weights
    voc = rgb(
        size_range=[[200, 200], [500, 400]],
        classes=[f"c{i}" for i in range(21)],
        shares=[0.7] + [0.3 / 20] * 19 + [0.001],
    )
    lines = {e["key"]: e["value"] for e in plan(voc, BUDGET, memory)}
    assert lines["data/transforms"] == "scale_crop_flip"
    assert lines["loss.ce.term.class_weights"] == "median"


@pytest.mark.parametrize(
    "model",
    [
        {"_target_": "lightseg.models.smp_models.build", "arch": "Unet"},
        {"_target_": "lightseg.models.smp_models.build", "arch": "FPN"},
        {"_target_": "lightseg.models.smp_models.build", "arch": "DeepLabV3Plus"},
        {"_target_": "lightseg.models.segnet.build"},
    ],
)
@pytest.mark.parametrize("median", [[117, 161], [1000, 333]])
def test_the_planned_size_fits_the_network(model, median):
    model = {**model, "encoder_name": "resnet18"} if "arch" in model else model
    model = {**model, "encoder_weights": None}
    info = network_info(model, 3, 1)
    lines = plan(rgb(size_median=median), {**BUDGET, "max_side": 256}, info)
    size = next(e["value"] for e in lines if e["key"] == "data.image_size")
    assert max(size) <= 256 + info["input_multiple"] and size[0] % info["input_multiple"] == 0
    assert math.isclose(size[1] / size[0], median[1] / median[0], rel_tol=0.25)  # aspect kept
    check_network(model, 1, 3, size)  # the network runs at it (raises otherwise)


def test_a_written_plan_is_used_under_the_command_line(tmp_path):
    path = tmp_path / "plan.yaml"
    lines = [
        {"key": "data.batch_size", "value": 3, "reason": "edited"},
        {"key": "optimizer.lr", "value": 0.01, "reason": "edited"},
        {"key": "loss.ce.term.pos_weight", "value": 2.0, "reason": "edited"},
    ]
    path.write_text(yaml.safe_dump({"lines": lines, "fingerprint": {"images": 9}}))
    given = ["optimizer.lr=0.05", "loss=[ce,dice]"]
    cfg = make_config(tmp_path, "recipe=auto", f"recipe.plan={path}", *given)
    planned = with_plan(cfg, given, lambda o: make_config(tmp_path, "recipe=auto", *o))
    assert planned.data.batch_size == 3 and planned.optimizer.lr == 0.05
    assert planned.loss.ce.term.pos_weight is None  # the command line chose the loss
    assert list(planned.recipe.applied) == ["data.batch_size=3"]
    assert list(planned.recipe.overridden) == ["optimizer.lr", "loss.ce.term.pos_weight"]
    assert planned.recipe.fingerprint.images == 9
    path.write_text("just text")
    with pytest.raises(LightsegError, match="is not a plan"):
        with_plan(cfg, given, lambda o: cfg)


def test_recipe_auto_trains_the_demo_and_records_the_plan(tmp_path, data_dir, monkeypatch):
    run_cli(monkeypatch, *tiny_cli_run(tmp_path, data_dir), "recipe=auto", "recipe.budget.steps=1")
    run = next((tmp_path / "logs" / "demo" / "runs").iterdir())
    stored = yaml.safe_load((run / "plan.yaml").read_text())
    assert {"data.image_size", "data.batch_size", "trainer.max_epochs"} <= set(stored["overridden"])
    assert "optimizer.lr=0.0012" in stored["applied"]  # batch 3 planned (12 images), 4 won
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["batch_size"] == 4 and config["data"]["image_size"] == [64, 64]
    assert config["data"]["mean"] == stored["fingerprint"]["mean"]  # the plan's, not ImageNet's
    card = json.loads((run / "metrics.json").read_text())["protocol"]
    assert card["recipe"]["fingerprint"]["source"] == "Demo"


def test_the_range_test_sets_the_rate_and_a_continued_run_keeps_its_plan(
    tmp_path, data_dir, monkeypatch
):
    tiny = [*tiny_cli_run(tmp_path, data_dir), "recipe=auto", "scheduler=none"]  # length free
    range_test = ["recipe.lr_find=true", "+lr_find.num_training=16", "+lr_find.max_lr=0.1"]
    run_cli(monkeypatch, *tiny, *range_test)
    run = next((tmp_path / "logs" / "demo" / "runs").iterdir())
    found = json.loads((run / "lr_find" / "lr_find.json").read_text())
    assert len(found["lr"]) == 16 and found["suggestion"] in found["lr"]
    stored = yaml.safe_load((run / "plan.yaml").read_text())
    (line,) = [e for e in stored["lines"] if e["key"] == "optimizer.lr"]
    assert line["value"] == float(f"{found['suggestion']:.2g}") and "range test" in line["reason"]
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["optimizer"]["lr"] == line["value"]

    def replan(*args, **kwargs):
        raise AssertionError("a continued run planned again")

    monkeypatch.setattr("lightseg.recipe.make_plan", replan)
    run_cli(monkeypatch, *tiny, f"ckpt_path={run}", "trainer.max_epochs=2")
    assert [p.name for p in (tmp_path / "logs" / "demo" / "runs").iterdir()] == [run.name]
    continued = yaml.safe_load((run / "config.yaml").read_text())
    assert continued["optimizer"]["lr"] == line["value"] and continued["trainer"]["max_epochs"] == 2
    assert yaml.safe_load((run / "plan.yaml").read_text())["lines"] == stored["lines"]
    assert json.loads((run / "metrics.json").read_text())["protocol"]["budget"]["epochs"] == 2


def test_demo_hard_lesions_span_5_to_70_percent_and_touch_borders(tmp_path):
    rng = np.random.default_rng(0)
    masks = [hard_case(rng)[1] for _ in range(40)]
    shares = [float(m.mean()) for m in masks]
    assert 0.05 <= min(shares) < 0.1 and 0.6 < max(shares) <= 0.7  # drawn from 5-70 %
    borders = [m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() for m in masks]
    assert 0.2 < np.mean(borders) < 0.9
    hard, plain_demo = Demo(tmp_path / "h", 5, hard=True), Demo(tmp_path / "p", 5)
    hard.prepare(), plain_demo.prepare()
    image, mask = hard.read(hard.find()[0])  # in PH2's layout, read by the PH2 reader
    assert image.dtype == np.uint8 and image.shape[:2] == mask.shape
    assert not np.array_equal(image, plain_demo.read(plain_demo.find()[0])[0])


@pytest.mark.slow
def test_the_plan_reaches_the_hand_recipe_on_the_demo_in_the_same_steps(tmp_path, data_dir):
    """recipe=auto within 0.01 test Dice of the demo's hand recipe at its number of steps, as
    ``make bench ARGS="--parts recipe --recipe-on demo --seeds 0"`` runs them (the bench's
    plain reference loop beside them; more seeds and demo_hard: the bench, README)."""
    from benchmarks.recipe import PLAIN_EPOCHS, recipe_rows

    given = [f"paths.data_dir={data_dir}", "trainer.accelerator=cpu"]  # as measured (README)
    hand, auto, plain = recipe_rows(["demo"], [0], tmp_path, given)
    assert (hand["recipe"], auto["recipe"], plain["recipe"]) == ("hand", "auto", "plain")
    assert hand["steps"] == auto["steps"] == "72"  # 12 epochs of 48 // 8 batches
    assert plain["steps"] == str(PLAIN_EPOCHS * 3)  # batch 16 of 48 images
    assert abs(float(auto["test/dice"]) - float(hand["test/dice"])) <= 0.01
    assert float(hand["test/dice"]) > 0.9 and float(plain["test/dice"]) > 0.8

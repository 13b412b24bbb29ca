"""`make score`: masks made elsewhere, scored on a run's split like `make eval`; failure shares."""

from __future__ import annotations

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from scipy import stats

from lightseg import CONFIG_DIR
from lightseg.checkpoints import load_module
from lightseg.errors import LightsegError
from lightseg.metrics import build_metrics, metrics_for
from lightseg.task import Task
from lightseg.tools.eval import evaluate
from lightseg.tools.inference import Segmenter
from lightseg.tools.report import Scores
from lightseg.tools.results import NumbersFrom
from lightseg.tools.score import main, score
from lightseg.tools.table import results
from tests.runs import run_app

IOU_FAIL, DICE_FAIL = "failure_rate/iou_below_0.65", "failure_rate/dice_below_0.5"


def test_failure_shares_by_hand():
    task = Task(("background", "lesion"))
    scores = Scores(build_metrics(metrics_for(task), task), task, {"iou": 0.65, "dice": 0.5})
    truth = np.zeros((10, 10), np.int64)
    truth[:, :5] = 1  # 50 lesion pixels
    shifted = np.zeros_like(truth)
    shifted[:, 2:7] = 1  # IoU 30 / 70 = 0.43 (fails), Dice 60 / 100 = 0.6 (passes)
    half = np.zeros_like(truth)
    half[:, :2] = 1  # IoU 20 / 50 = 0.4, Dice 40 / 70 = 0.57
    cases = {
        "perfect": (truth, truth),
        "shifted": (shifted, truth),
        "half": (half, truth),
        "missed": (1 - truth, truth),  # IoU 0, Dice 0: fails both
        "empty": (np.zeros_like(truth), np.zeros_like(truth)),  # no lesion: no IoU, no Dice
    }
    for sample_id, (prediction, target) in cases.items():
        scores.update_mask(prediction, torch.from_numpy(target)[None], sample_id)
    flags = {i: (v[IOU_FAIL], v[DICE_FAIL]) for i, v in scores.per_image}
    assert flags["perfect"] == (0.0, 0.0) and flags["missed"] == (1.0, 1.0)
    assert flags["shifted"] == (1.0, 0.0) and flags["half"] == (1.0, 0.0)
    assert all(math.isnan(flag) for flag in flags["empty"])  # neither failed nor passed
    summary = scores.summary()
    assert summary[IOU_FAIL] == pytest.approx(3 / 4)  # of the 4 images with a value
    assert summary[DICE_FAIL] == pytest.approx(1 / 4)


def test_the_table_shows_failure_shares_with_a_bootstrap_ci_lowest_best(tmp_path):
    flags = {"a": [1, 0, 0, 1, 0, 0], "b": [1, 1, 0, 1, 1, 0]}
    for name, values in flags.items():
        folder = tmp_path / name / "eval" / "test_2024-01-01_00-00-00"
        folder.mkdir(parents=True)
        (tmp_path / name / "config.yaml").write_text(f"name: {name}\n")
        (tmp_path / name / ".hydra").mkdir()
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(f"- name={name}\n")
        report = {"metrics": {"plain": {IOU_FAIL: float(np.mean(values))}}}
        (folder / "eval.json").write_text(json.dumps({**report, "examples_from": "plain"}))
        rows = "".join(f"img{i},plain,{v}\n" for i, v in enumerate(values))
        (folder / "per_image.csv").write_text(f"id,variant,{IOU_FAIL}\n{rows}")
    metric = f"test/{IOU_FAIL}"
    table = results(tmp_path, [metric], numbers_from=NumbersFrom(eval=True), resamples=500)
    a, b = table.cells[metric, "name=a"], table.cells[metric, "name=b"]
    assert a.runs == [pytest.approx(2 / 6)] and b.runs == [pytest.approx(4 / 6)]
    assert a.bold and not b.bold and a.p_text == "best"  # the lower share is the better one
    expected = stats.bootstrap(
        (np.array(flags["a"], float),),
        np.mean,
        n_resamples=500,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert a.ci == pytest.approx((expected.low, expected.high))


@pytest.fixture
def own_predictions(demo_checkpoint, tmp_path):
    """A copy of the demo run (config and split lists) evaluated, and the masks its checkpoint
    predicts for the test split, as 0/1 PNGs named <id>.png."""
    run = tmp_path / "run"
    shutil.copytree(demo_checkpoint.parent.parent, run, ignore=shutil.ignore_patterns("*.ckpt"))
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "eval",
            [f"ckpt_path={demo_checkpoint}", f"output_dir={run / 'eval' / 'test_2024'}"],
        )
    evaluate(cfg, data_from_run=True)
    datamodule = instantiate(OmegaConf.load(run / "config.yaml").data, _convert_="all")
    segmenter = Segmenter(load_module(demo_checkpoint))
    pred = tmp_path / "pred"
    pred.mkdir()
    for sample in datamodule.locate()["test"]:
        image, _ = datamodule.source.read(sample)
        mask = segmenter(image).argmax(0).astype(np.uint8)
        Image.fromarray(mask).save(pred / f"{sample.id}.png")
    return run, pred


def score_config(run, pred, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("score", [f"run={run}", f"pred={pred}", "name=own", *overrides])


def csv_rows(path):
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_scoring_a_runs_own_predictions_reproduces_its_eval(own_predictions):
    run, pred = own_predictions
    report = score(score_config(run, pred))
    evaluated = run / "eval" / "test_2024"
    expected = json.loads((evaluated / "eval.json").read_text())["metrics"]["plain"]
    calibration = {"ece", "brier"}  # of probabilities: hard masks have none
    assert calibration < expected.keys() and not calibration & report["metrics"]["own"].keys()
    expected = {k: v for k, v in expected.items() if k not in calibration}
    assert report["metrics"]["own"] == expected and IOU_FAIL in expected
    folder = run / "baselines" / "own" / "eval"
    (written,) = folder.glob("test_*")
    eval_rows = csv_rows(evaluated / "per_image.csv")
    score_rows = csv_rows(written / "per_image.csv")
    assert len(score_rows) == 3 and {r["variant"] for r in score_rows} == {"own"}
    for row in (*eval_rows, *score_rows):
        del row["variant"]
    for row in eval_rows:  # masks carry no probabilities, so no uncertainty
        assert 0 < float(row.pop("uncertainty")) < 1
    assert score_rows == eval_rows  # every image, every value, to the last written digit
    # make table pairs the masks with the run's own eval: the same images, no difference
    table = results(run, ["test/dice", f"test/{IOU_FAIL}"], numbers_from=NumbersFrom(eval=True))
    labels = [row.label for row in table.rows]
    assert labels == ["name=demo", "name=own"]
    own, demo = table.cells["test/dice", "name=own"], table.cells["test/dice", "name=demo"]
    assert own.images == demo.images and len(own.images) == 3
    assert {own.p_text, demo.p_text} == {"best", "1.000 (0.000)"}  # p (MDD): nothing differs


def test_missing_extra_and_mis_sized_masks_are_one_paragraph(own_predictions, capsys):
    run, pred = own_predictions
    masks = sorted(pred.glob("*.png"))
    masks[0].unlink()
    Image.open(masks[1]).resize((20, 10)).save(masks[1])
    Image.new("L", (64, 64)).save(pred / "IMD999.png")
    with pytest.raises(LightsegError) as raised:
        score(score_config(run, pred))
    message = " ".join(str(raised.value).split())
    assert f"1 test image(s) without a mask: {masks[0].stem};" in message
    assert "1 mask(s) of no test image: IMD999;" in message
    assert f"1 mask(s) of another size than their image: {masks[1].stem}: 20x10, its image" in (
        message
    )
    assert not (run / "baselines" / "own" / "eval").exists()
    with pytest.raises(SystemExit) as stopped:  # the command line: the paragraph, no traceback
        run_app(main, f"run={run}", f"pred={pred}", "name=own")
    assert stopped.value.code == 1
    err = capsys.readouterr().err
    assert "without a mask" in err and "Traceback" not in err


def test_a_threshold_that_is_no_number_is_named():
    task = Task(("background", "lesion"))
    with pytest.raises(LightsegError, match=r"failure.iou=high is not a number: .*~failure.iou"):
        Scores(build_metrics(metrics_for(task), task), task, {"iou": "high"})


def test_a_changed_split_and_a_bad_name_are_refused(own_predictions):
    run, pred = own_predictions
    with pytest.raises(LightsegError, match=r"name='a/b' must be a plain folder name"):
        score(score_config(run, pred, "name=a/b"))
    listed = run / "splits" / "test.txt"
    listed.write_text("".join(f"{i}\n" for i in reversed(listed.read_text().split())))
    with pytest.raises(LightsegError, match=r"test.txt' lists other images than the run's data"):
        score(score_config(run, pred))

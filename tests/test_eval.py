"""`make eval`: metrics at native resolution, side by side with TTA and CRF, and its files."""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from lightseg import CONFIG_DIR
from lightseg.checkpoints import load_module
from lightseg.errors import LightsegError
from lightseg.tools import eval as eval_tool
from lightseg.tools.eval import evaluate, main
from lightseg.tools.inference import Segmenter, checkpoint_paths, load_segmenter
from lightseg.tools.uncertainty import mean_entropy


def eval_config(ckpt, tmp_path, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("eval", [f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'eval'}", *overrides])


def confusion_by_hand(ckpt, split="test"):
    """Predict every image of the run's split directly and count (true, predicted) pixels."""
    run = ckpt.parent.parent
    datamodule = instantiate(OmegaConf.load(run / "config.yaml").data, _convert_="all")
    datamodule.setup()
    segmenter = Segmenter(load_module(ckpt))
    confusion = np.zeros((2, 2), np.int64)
    for sample in datamodule.splits[split]:
        image, mask = datamodule.source.read(sample)
        prediction = segmenter(image).argmax(0)
        confusion += np.bincount(mask.ravel() * 2 + prediction.ravel(), minlength=4).reshape(2, 2)
    return confusion, len(datamodule.splits[split])


@pytest.mark.filterwarnings("error:The given NumPy array is not writable")  # read-only images
def test_eval_numbers_equal_the_confusion_matrix(demo_checkpoint, tmp_path):
    report = evaluate(eval_config(demo_checkpoint, tmp_path), data_from_run=True)
    confusion, images = confusion_by_hand(demo_checkpoint)
    hits = np.diag(confusion)
    iou = hits / (confusion.sum(0) + confusion.sum(1) - hits)
    dice = 2 * hits / (confusion.sum(0) + confusion.sum(1))
    metrics = report["metrics"]["plain"]
    assert report["images"] == images == 3
    assert list(report["metrics"]) == ["plain"]
    assert metrics["iou"] == pytest.approx(iou[1], abs=1e-6)  # binary: the foreground class
    assert metrics["dice"] == pytest.approx(dice[1], abs=1e-6)
    assert metrics["iou_background"] == pytest.approx(iou[0], abs=1e-6)
    assert metrics["dice_background"] == pytest.approx(dice[0], abs=1e-6)
    assert metrics["acc"] == pytest.approx(hits.sum() / confusion.sum(), abs=1e-6)

    folder = tmp_path / "eval"
    assert json.loads((folder / "eval.json").read_text())["metrics"] == report["metrics"]
    rows = list(csv.DictReader((folder / "per_class.csv").open()))
    assert [r["class"] for r in rows] == ["background", "lesion"]
    assert float(rows[1]["iou_plain"]) == pytest.approx(iou[1], abs=1e-5)
    assert float(rows[0]["dice_plain"]) == pytest.approx(dice[0], abs=1e-5)
    assert Image.open(folder / "confusion_matrix.png").size[0] > 100
    examples = Image.open(folder / "examples.png")
    assert examples.width == 3 * 256 + 2 * 2  # image | truth | prediction panels
    worst, best = report["worst"], report["best"]
    assert len(worst) + len(best) == 3  # 3 test images: none appears twice
    assert max(w["score"] for w in worst) <= min(b["score"] for b in best)


def test_tta_is_reported_next_to_plain_inference(demo_checkpoint, tmp_path):
    plain = evaluate(eval_config(demo_checkpoint, tmp_path / "a"), data_from_run=True)
    both = evaluate(
        eval_config(demo_checkpoint, tmp_path / "b", "inference.flip=true"), data_from_run=True
    )
    assert list(both["metrics"]) == ["plain", "tta"]
    assert both["metrics"]["plain"] == plain["metrics"]["plain"]
    assert both["metrics"]["tta"]["dice"] != plain["metrics"]["plain"]["dice"]
    assert both["inference"]["flip"] is True


def test_crf_is_reported_next_to_the_network_output(demo_checkpoint, tmp_path):
    pytest.importorskip("pydensecrf.densecrf")
    report = evaluate(
        eval_config(demo_checkpoint, tmp_path, "postprocess=crf", "postprocess.iterations=2"),
        data_from_run=True,
    )
    assert list(report["metrics"]) == ["plain", "plain+crf"]
    assert report["postprocess"]["iterations"] == 2
    assert 0 <= report["metrics"]["plain+crf"]["iou"] <= 1


def run_eval(monkeypatch, *args: str) -> None:
    """``python -m lightseg.tools.eval ARGS``, in this process."""
    monkeypatch.setattr(sys, "argv", ["lightseg.tools.eval", *args])
    try:
        main()
    finally:
        GlobalHydra.instance().clear()


def test_command_line_reads_the_run_config_and_takes_data_split(
    demo_checkpoint, monkeypatch, capsys
):
    run_eval(monkeypatch, f"ckpt_path={demo_checkpoint}", "data.split=val")
    folders = sorted((demo_checkpoint.parent.parent / "eval").glob("val_*"))
    report = json.loads((folders[-1] / "eval.json").read_text())
    assert report["split"] == "val" and report["images"] == 3
    assert "dice_lesion" in capsys.readouterr().out


def test_the_command_line_adds_a_metric_to_the_runs_set_or_chooses_another_set(
    demo_checkpoint, tmp_path, monkeypatch
):
    extra = [
        "+metrics.acc_tm._target_=torchmetrics.classification.MulticlassAccuracy",
        "+metrics.acc_tm.average=micro",  # over labelled pixels: the pixel accuracy
    ]
    run_eval(monkeypatch, f"ckpt_path={demo_checkpoint}", f"output_dir={tmp_path / 'a'}", *extra)
    added = json.loads((tmp_path / "a" / "eval.json").read_text())["metrics"]["plain"]
    stored = load_module(demo_checkpoint).hparams.metrics  # the run's set, plus acc_tm
    assert set(stored) < set(added) and "dice_per_image" in added
    assert added["acc_tm"] == pytest.approx(added["acc"], abs=1e-6)
    run_eval(
        monkeypatch,
        f"ckpt_path={demo_checkpoint}",
        f"output_dir={tmp_path / 'b'}",
        "metrics=multiclass",
    )
    chosen = json.loads((tmp_path / "b" / "eval.json").read_text())["metrics"]["plain"]
    assert {"mean_acc", "fwiou"} <= set(chosen) and "dice_per_image" not in chosen
    assert chosen["acc"] == added["acc"] and chosen["iou_lesion"] == added["iou_lesion"]


def test_data_of_another_task_is_refused(demo_checkpoint, tmp_path, data_dir):
    cfg = eval_config(
        demo_checkpoint, tmp_path, "experiment=voc_unet", f"paths.data_dir={data_dir}"
    )
    with pytest.raises(LightsegError, match="predicts classes"):
        evaluate(cfg, data_from_run=False)


def test_without_a_run_config_the_dataset_must_be_named(demo_checkpoint, tmp_path):
    lone = tmp_path / "lone.ckpt"
    lone.write_bytes(demo_checkpoint.read_bytes())
    with pytest.raises(LightsegError, match=r"Name it: experiment=\.\.\. or data="):
        evaluate(eval_config(lone, tmp_path), data_from_run=True)


def test_per_image_csv_holds_each_images_values_from_the_same_metrics(demo_checkpoint, tmp_path):
    report = evaluate(eval_config(demo_checkpoint, tmp_path, "inference.flip=true"), True)
    rows = list(csv.DictReader((tmp_path / "eval" / "per_image.csv").open()))
    assert [r["variant"] for r in rows] == ["plain"] * 3 + ["tta"] * 3
    trained = json.loads((demo_checkpoint.parent.parent / "metrics.json").read_text())
    stages = {k.split("/", 1)[1] for k in trained if k.startswith(("val/", "test/"))}
    failures = {"failure_rate/iou_below_0.65", "failure_rate/dice_below_0.5"}  # configs/train.yaml
    assert set(report["metrics"]["plain"]) == (stages - {"loss"}) | failures
    # each image's Dice by hand, from the same predictions the evaluation made
    run = demo_checkpoint.parent.parent
    datamodule = instantiate(OmegaConf.load(run / "config.yaml").data, _convert_="all")
    segmenter = Segmenter(load_module(demo_checkpoint))
    by_id = {s.id: s for s in datamodule.locate()["test"]}
    for row in rows[:3]:
        image, mask = datamodule.source.read(by_id[row["id"]])
        predicted = segmenter(image).argmax(0) == 1
        truth = mask == 1
        dice = 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum())
        assert float(row["dice_per_image"]) == pytest.approx(dice, abs=1e-5)
        assert float(row["dice"]) == pytest.approx(dice, abs=1e-5)
    for name in ("dice_per_image", "jaccard_thresholded", "hd95", "assd"):  # means over images
        mean = np.mean([float(r[name]) for r in rows[:3]])
        assert report["metrics"]["plain"][name] == pytest.approx(mean, abs=1e-5)


def test_an_image_and_mask_of_different_sizes_are_named(demo_checkpoint, tmp_path):
    import shutil

    run = demo_checkpoint.parent.parent
    source_root = Path(OmegaConf.load(run / "config.yaml").data.source.root)
    copy = tmp_path / "data" / "demo" / source_root.parent.name / "PH2Dataset"
    shutil.copytree(source_root, copy)
    test_ids = (run / "splits" / "test.txt").read_text().split()
    mask = copy / "PH2 Dataset images" / test_ids[0] / f"{test_ids[0]}_lesion"
    mask = mask / f"{test_ids[0]}_lesion.bmp"
    Image.open(mask).resize((20, 10)).save(mask)
    cfg = eval_config(
        demo_checkpoint,
        tmp_path,
        "experiment=demo",
        f"paths.data_dir={tmp_path / 'data'}",
        "data.source.num_cases=16",
        "data.image_size=64",
    )
    with pytest.raises(LightsegError, match=rf"sample '{test_ids[0]}' differ in size: .*20x10"):
        evaluate(cfg, data_from_run=False)


def test_a_full_disk_is_one_paragraph_and_keeps_the_earlier_evaluation(
    demo_checkpoint, tmp_path, monkeypatch
):
    cfg = eval_config(demo_checkpoint, tmp_path)
    evaluate(cfg, data_from_run=True)
    folder = tmp_path / "eval"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def disk_fills(path, *args):
        path.write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(eval_tool, "save_examples", disk_fills)
    with pytest.raises(LightsegError) as raised:
        evaluate(eval_config(demo_checkpoint, tmp_path, "split=val"), data_from_run=True)
    message = str(raised.value)
    assert f"The disk is full: the evaluation could not be written in '{folder}'" in message
    assert "output_dir=" in message
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # whole, and no part


# --- ensembles ------------------------------------------------------------------------------


def altered_checkpoint(ckpt: Path, path: Path, classes=None, noise: float = 0.0) -> Path:
    """A copy of ``ckpt`` with its weights moved by ``noise`` or its class names replaced."""
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(1)
    for name, value in checkpoint["state_dict"].items():
        if value.is_floating_point() and name.startswith("net."):
            value += noise * torch.randn(value.shape, generator=generator)
    if classes:
        checkpoint["hyper_parameters"]["classes"] = classes
    torch.save(checkpoint, path)
    return path


def test_an_ensemble_of_two_identical_checkpoints_equals_one_and_costs_twice(
    demo_checkpoint, tmp_path
):
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(demo_checkpoint.read_bytes())
    one = evaluate(eval_config(demo_checkpoint, tmp_path / "one", "inference.flip=true"), True)
    both = f"'{demo_checkpoint},{copy}'"  # as `make eval CKPT=a,b` quotes it
    two = evaluate(eval_config(both, tmp_path / "two", "inference.flip=true"), True)
    assert two["metrics"] == one["metrics"] and list(two["metrics"]) == ["plain", "tta"]
    assert two["members"] == [str(demo_checkpoint), str(copy)] and two["checkpoint"] == "ensemble"
    stored = json.loads((tmp_path / "two" / "eval" / "eval.json").read_text())
    assert stored["cost"]["variant"] == "tta"
    assert one["cost"]["passes_per_image"] == 2  # 1 member x 2 views (plain, flipped)
    assert stored["cost"]["passes_per_image"] == 4  # 2 members x 2 views
    assert stored["cost"]["seconds_per_image"] > 0
    rows = list(csv.DictReader((tmp_path / "two" / "eval" / "per_image.csv").open()))
    assert len(rows) == 6 and (tmp_path / "two" / "eval" / "per_class.csv").is_file()
    # identical members never disagree; their flipped views do
    assert all(float(r["disagreement"]) == 0 for r in rows[:3])
    assert all(0 < float(r["disagreement"]) < float(r["uncertainty"]) for r in rows[3:])


def test_ensemble_probabilities_are_the_mean_of_its_members(demo_checkpoint, tmp_path):
    other = altered_checkpoint(demo_checkpoint, tmp_path / "other.ckpt", noise=0.05)
    image = np.random.default_rng(3).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    ensemble = load_segmenter(f"{demo_checkpoint},{other}", "cpu", {"flip": True})
    first, second = (Segmenter(load_module(p), flip=True)(image) for p in (demo_checkpoint, other))
    assert not np.allclose(first, second, atol=1e-3)  # the members disagree
    np.testing.assert_allclose(ensemble(image), (first + second) / 2, atol=1e-6)
    plain, augmented = ensemble.views_with_and_without_tta(image)
    np.testing.assert_allclose(augmented.probabilities, (first + second) / 2, atol=1e-6)
    singles = [Segmenter(load_module(p))(image) for p in (demo_checkpoint, other)]
    np.testing.assert_allclose(plain.probabilities, sum(singles) / 2, atol=1e-6)


def test_a_folder_of_runs_is_every_runs_best_checkpoint(demo_run, tmp_path):
    for fold in ("fold_0", "fold_1"):
        (tmp_path / "runs" / fold / "checkpoints").mkdir(parents=True)
        (tmp_path / "runs" / fold / "checkpoints" / "best.ckpt").write_bytes(b"")
    found = checkpoint_paths(str(tmp_path / "runs"))
    assert found == [
        tmp_path / "runs" / f / "checkpoints" / "best.ckpt" for f in ("fold_0", "fold_1")
    ]
    assert checkpoint_paths(demo_run) == [demo_run]  # a run's own folder: refused as before


def test_checkpoints_of_different_classes_are_refused_in_one_paragraph(demo_checkpoint, tmp_path):
    other = altered_checkpoint(demo_checkpoint, tmp_path / "other.ckpt", ["background", "mole"])
    src = Path(eval_tool.__file__).parents[2]  # this checkout's package, not an installed one
    result = subprocess.run(
        [sys.executable, "-m", "lightseg.tools.eval", f"ckpt_path='{demo_checkpoint},{other}'"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
    error = result.stderr.strip()
    assert error.count("lightseg: error:") == 1 and "\n\n" not in error
    assert f"'{demo_checkpoint}' and '{other}' cannot be ensembled" in error
    assert "classes ['background', 'lesion'] vs ['background', 'mole']" in error


def test_each_image_has_an_uncertainty_and_the_coverage_curve_ranks_by_it(
    demo_checkpoint, tmp_path
):
    report = evaluate(eval_config(demo_checkpoint, tmp_path, "inference.flip=true"), True)
    folder = tmp_path / "eval"
    rows = list(csv.DictReader((folder / "per_image.csv").open()))
    run = demo_checkpoint.parent.parent
    datamodule = instantiate(OmegaConf.load(run / "config.yaml").data, _convert_="all")
    segmenter = Segmenter(load_module(demo_checkpoint), flip=True)
    by_id = {s.id: s for s in datamodule.locate()["test"]}
    for row in rows[3:]:  # tta: the entropy of the mean of the views, minus theirs
        image, _ = datamodule.source.read(by_id[row["id"]])
        views = [v[0] for v in segmenter.views(segmenter.normalize(image)).values()]
        mean = sum(views) / 2
        assert float(row["uncertainty"]) == pytest.approx(mean_entropy(mean), abs=1e-6)
        disagreement = mean_entropy(mean) - (mean_entropy(views[0]) + mean_entropy(views[1])) / 2
        assert float(row["disagreement"]) == pytest.approx(disagreement, abs=1e-6)
        assert 0 < float(row["disagreement"]) < float(row["uncertainty"]) < 1
    assert all(r["disagreement"] == "" for r in rows[:3])  # plain: one view, nothing to compare

    stored = json.loads((folder / "eval.json").read_text())
    assert stored["coverage"] == report["coverage"] and list(report["coverage"]) == ["plain", "tta"]
    for variant, part in (("plain", rows[:3]), ("tta", rows[3:])):
        entry = report["coverage"][variant]
        uncertainty, dice = ([float(r[k]) for r in part] for k in ("uncertainty", "dice"))
        assert entry["metric"] == "dice" and len(entry["curve"]) == 3
        assert entry["full"] == pytest.approx(np.mean(dice), abs=1e-5)  # all images kept
        assert entry["curve"][0][1] == pytest.approx(dice[int(np.argmin(uncertainty))], abs=1e-5)
        assert entry["curve"][-1] == [1.0, pytest.approx(entry["full"])]
        assert entry["area"] == pytest.approx(np.mean([v for _, v in entry["curve"]]))
        assert entry["area"] <= entry["oracle_area"] + 1e-9
    assert Image.open(folder / "coverage.png").size[0] > 300

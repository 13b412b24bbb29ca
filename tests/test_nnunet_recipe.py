"""scripts/nnunet.py: a run's splits in nnU-Net v2's raw 2D format, and its masks back to score."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from lightseg import CONFIG_DIR
from lightseg.data.source import read_pair
from lightseg.errors import LightsegError
from lightseg.tools.score import score

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "nnunet.py"
spec = importlib.util.spec_from_file_location("nnunet_recipe", SCRIPT)
nnunet = importlib.util.module_from_spec(spec)
spec.loader.exec_module(nnunet)


def test_case_names_labels_and_channels_by_hand():
    ids = ["IMD002", "ISIC 0001", "a/b", "a_b", "x.y"]
    assert nnunet.case_names(ids) == {
        "IMD002": "IMD002",
        "ISIC 0001": "ISIC_0001",
        "a/b": "a_b",
        "a_b": "a_b_1",  # a/b took a_b first
        "x.y": "x_y",
    }
    assert nnunet.label_names(("bg", "road", "car"), ignore=True) == {
        "background": 0,
        "road": 1,
        "car": 2,
        "ignore": 3,  # nnU-Net: the highest label
    }
    with pytest.raises(LightsegError, match=r"\['ignore'\] is a duplicate or one of the names"):
        nnunet.label_names(("background", "ignore"), ignore=False)
    gray = np.arange(12, dtype=np.uint16).reshape(3, 4, 1) * 5000
    (file,), names = nnunet.channel_images(gray, "g")
    assert names == ["gray"] and file.mode == "I;16" and file.size == (4, 3)
    assert np.array_equal(np.asarray(file), gray[..., 0])
    four = np.zeros((3, 4, 4), np.uint8)
    four[..., 3] = 7
    files, names = nnunet.channel_images(four, "f")
    assert names == ["channel0", "channel1", "channel2", "channel3"]
    assert [f.mode for f in files] == ["L"] * 4 and np.asarray(files[3]).tolist() == [[7] * 4] * 3
    with pytest.raises(LightsegError, match=r"Sample 'x' is a float32 image, but nnU-Net's 2D"):
        nnunet.channel_images(np.zeros((3, 4, 3), np.float32), "x")


@pytest.fixture
def run(demo_run, tmp_path):
    """A copy of the demo run's config and split lists (score writes its baselines into it)."""
    copy = tmp_path / "run"
    shutil.copytree(demo_run, copy, ignore=shutil.ignore_patterns("*.ckpt"))
    return copy


def test_export_then_import_scores_ground_truth_as_dice_one(run, tmp_path, monkeypatch, capsys):
    datamodule = instantiate(OmegaConf.load(run / "config.yaml").data, _convert_="all")
    splits = datamodule.locate()
    ids = {name: (run / "splits" / f"{name}.txt").read_text().split() for name in splits}
    assert {name: [s.id for s in samples] for name, samples in splits.items()} == ids
    ignored = splits["train"][0].id  # one training mask gets an ignored pixel, at (2, 3)

    def with_ignore(source, sample):
        image, mask = read_pair(source, sample)
        if sample.id == ignored:
            mask = mask.copy()
            mask[2, 3] = 255
        return image, mask

    monkeypatch.setattr(nnunet, "read_pair", with_ignore)
    raw = tmp_path / "nnUNet_raw"
    nnunet.main(["export", "--run", str(run), "--out", str(raw), "--dataset-id", "501"])
    printed = capsys.readouterr().out
    dataset = raw / "Dataset501_Demo"
    assert sorted(p.name for p in raw.iterdir()) == ["Dataset501_Demo"]  # no scratch left
    for command in (
        "nnUNetv2_plan_and_preprocess -d 501 -c 2d",
        f"cp {dataset / 'splits_final.json'} $nnUNet_preprocessed/Dataset501_Demo/",
        "nnUNetv2_train 501 2d 0",
        f"nnUNetv2_predict -i {dataset / 'imagesTs'} -o nnunet_pred -d 501 -c 2d -f 0",
    ):
        assert command in printed

    described = json.loads((dataset / "dataset.json").read_text())
    trained = ids["train"] + ids["val"]
    assert described["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert described["labels"] == {"background": 0, "lesion": 1, "ignore": 2}
    assert described["numTraining"] == len(trained) == 13  # 16 demo cases: 10 train, 3 val, 3 test
    assert described["file_ending"] == ".png"
    assert described["overwrite_image_reader_writer"] == "NaturalImage2DIO"
    assert json.loads((dataset / "splits_final.json").read_text()) == [
        {"train": ids["train"], "val": ids["val"]}
    ]
    mapping = json.loads((dataset / "lightseg_ids.json").read_text())["splits"]
    assert mapping == {name: {i: i for i in ids[name]} for name in ids}  # demo ids are clean
    assert sorted(p.name for p in (dataset / "imagesTr").iterdir()) == sorted(
        f"{i}_0000.png" for i in trained
    )
    assert sorted(p.name for p in (dataset / "labelsTr").iterdir()) == sorted(
        f"{i}.png" for i in trained
    )
    assert sorted(p.name for p in (dataset / "imagesTs").iterdir()) == sorted(
        f"{i}_0000.png" for i in ids["test"]
    )
    for split, samples in splits.items():
        for sample in samples:
            image, mask = read_pair(datamodule.source, sample)
            folder = "imagesTs" if split == "test" else "imagesTr"
            written = Image.open(dataset / folder / f"{sample.id}_0000.png")
            assert written.mode == "RGB" and np.array_equal(np.asarray(written), image)
            if split == "test":
                continue
            label = Image.open(dataset / "labelsTr" / f"{sample.id}.png")
            expected = mask.copy()
            if sample.id == ignored:
                expected[2, 3] = 2  # 255 -> the ignore label
            assert label.mode == "L" and np.array_equal(np.asarray(label), expected)
    assert set(np.unique(np.asarray(Image.open(dataset / "labelsTr" / f"{ignored}.png")))) == {
        0,
        1,
        2,
    }

    # nnUNetv2_predict's folder: <case>.png plus its json files; here the ground truth
    pred = tmp_path / "nnunet_pred"
    pred.mkdir()
    for name in ("dataset.json", "plans.json", "predict_from_raw_data_args.json"):
        (pred / name).write_text("{}")
    for sample in splits["test"]:
        _, mask = read_pair(datamodule.source, sample)
        Image.fromarray(mask, "L").save(pred / f"{sample.id}.png")
    masks = tmp_path / "masks"
    nnunet.main(["import", "--dataset", str(dataset), "--pred", str(pred), "--out", str(masks)])
    assert sorted(p.name for p in masks.iterdir()) == sorted(f"{i}.png" for i in ids["test"])
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("score", [f"run={run}", f"pred={masks}", "name=nnunet"])
    report = score(cfg)
    assert report["images"] == 3
    assert report["metrics"]["nnunet"]["dice"] == 1.0
    assert report["metrics"]["nnunet"]["iou"] == 1.0

    # the command line: one paragraph, exit 1, no traceback
    for argv, message in (
        (["export", "--run", str(run), "--out", str(raw), "--dataset-id", "501"], "already holds"),
        (
            ["import", "--dataset", str(dataset), "--pred", str(pred), "--out", str(masks)],
            "not empty",
        ),
    ):
        with pytest.raises(SystemExit) as stopped:
            nnunet.main(argv)
        assert stopped.value.code == 1
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err


def test_import_names_the_cases_without_a_prediction(run, tmp_path):
    dataset = nnunet.export(run, tmp_path / "raw", 7, "Lesions")
    assert dataset.name == "Dataset007_Lesions"
    labels = json.loads((dataset / "dataset.json").read_text())["labels"]
    assert labels == {"background": 0, "lesion": 1}  # no 255 in the masks: no ignore label
    test_ids = (run / "splits" / "test.txt").read_text().split()
    pred = tmp_path / "pred"
    pred.mkdir()
    Image.new("L", (8, 8)).save(pred / f"{test_ids[0]}.png")
    with pytest.raises(
        LightsegError,
        match=rf"no prediction for 2 of the 3 test case\(s\): "
        rf"{test_ids[1]}, {test_ids[2]}\.",
    ):
        nnunet.import_predictions(dataset, pred, tmp_path / "masks")
    assert not (tmp_path / "masks").exists()

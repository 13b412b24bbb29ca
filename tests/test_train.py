"""End to end: every experiment config runs, and a short real run writes what it promises."""

from __future__ import annotations

import json

import pytest
import torch

from lightseg.train import train
from tests.conftest import EXPERIMENTS, FAST, make_config


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_one_batch(experiment, tmp_path, data_dir):
    cfg = make_config(
        tmp_path, f"experiment={experiment}", *FAST, "data.image_size=[64,64]", data_dir=data_dir
    )
    metrics = train(cfg)
    assert {"val/loss", "val/iou", "val/dice", "test/iou", "test/dice"} <= metrics.keys()
    assert all(0.0 <= metrics[k] <= 1.0 for k in metrics if k.endswith(("iou", "dice")))
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics


def test_short_demo_run_writes_run_folder(tmp_path, data_dir):
    cfg = make_config(
        tmp_path,
        "experiment=demo",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "logger=csv",
        "data.num_workers=0",
        "data.image_size=[64,64]",
        "data.source.num_cases=20",
        data_dir=data_dir,
    )
    metrics = train(cfg)
    run = tmp_path / "run"
    for path in (
        "config.yaml",
        "metrics.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "csv/version_0/metrics.csv",
        "splits/train.txt",
        "splits/val.txt",
        "splits/test.txt",
    ):
        assert (run / path).is_file(), path
    assert sorted(metrics) == sorted(json.loads((run / "metrics.json").read_text()))
    # 20 cases, val/test 0.2 each, stratified 2:2:1 -> 4 val, 4 test, 12 train
    sizes = {
        s: len((run / "splits" / f"{s}.txt").read_text().split()) for s in ("train", "val", "test")
    }
    assert sizes == {"train": 12, "val": 4, "test": 4}
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["classes"] == ["background", "lesion"]
    assert hparams["model"]["arch"] == "Unet" and hparams["model"]["encoder_name"] == "resnet18"
    assert hparams["normalization"]["mean"] == [0.485, 0.456, 0.406]

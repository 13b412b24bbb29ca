"""Two CPU processes (gloo): same numbers as one process, data prepared once per process, rank 0
writes."""

from __future__ import annotations

import csv

import pytest
import torch
from hydra.utils import instantiate

from lightseg.errors import user_message
from lightseg.experiment import build_module, build_trainer, resolve
from tests.conftest import make_config


def untrained_demo(tmp_path, data_dir, trainer: str, *overrides: str):
    """(trainer, module, datamodule) of an untrained demo network at 64x64, no loggers."""
    cfg = make_config(
        tmp_path,
        "experiment=demo",
        f"trainer={trainer}",
        "logger=none",
        "callbacks=none",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.image_size=[64,64]",
        "data.source.num_cases=20",
        "data.cache.scale=null",  # cached as read: the same pixels as without the cache
        *overrides,
        data_dir=data_dir,
    )
    datamodule = instantiate(cfg.data, _convert_="all")
    cfg = resolve(cfg, datamodule)  # the task's metric set
    torch.manual_seed(0)
    module = build_module(cfg, datamodule)
    trainer = build_trainer(cfg, enable_progress_bar=False, enable_model_summary=False)
    return trainer, module, datamodule


def validate(tmp_path, data_dir, trainer: str) -> dict[str, float]:
    trainer, module, datamodule = untrained_demo(
        tmp_path,
        data_dir,
        trainer,
        "data.split.val=0.25",  # 5 images: ranks get 3 and 2, no padding allowed
        "data.source._target_=tests.sources.CountingDemo",
        # cross-entropy is a mean over pixels, the same whichever way images are batched
        # (a Dice term is not: it is computed per batch, and batches differ between 1 and 2
        # processes), so val/loss must match as exactly as every metric
        "loss=ce",
    )
    return trainer.validate(module, datamodule=datamodule, verbose=False)[0]


def test_ddp_validation_metrics_equal_single_process(tmp_path, data_dir):
    single = validate(tmp_path / "one", data_dir, "cpu")
    calls = data_dir / "demo" / "20-cases-seed0" / "prepare_calls.txt"
    calls.unlink(missing_ok=True)
    double = validate(tmp_path / "two", data_dir, "ddp_sim")
    # prepare() runs once in each process that finds samples, under the dataset's lock: here
    # the main process (resolve reads the task), whose splits the spawned ranks inherit;
    # tests/test_data_base.py checks the lock
    assert calls.read_text() == "prepare\n"
    assert single.keys() == double.keys() and "val/dice_per_image" in single
    assert 0.0 < single["val/iou"] < 1.0  # an untrained net: a non-trivial number to match
    assert double == pytest.approx(single, abs=1e-6)


def run_test_stage(tmp_path, data_dir, trainer: str) -> tuple[dict[str, float], list[dict]]:
    """Test-stage metrics and per_image.csv rows of an untrained demo network."""
    trainer, module, datamodule = untrained_demo(
        tmp_path,
        data_dir,
        trainer,
        "+callbacks.per_image_results._target_=lightseg.callbacks.PerImageResults",
        f"+callbacks.per_image_results.folder={tmp_path / 'run'}",
        "data.split.test=0.25",  # 5 images: ranks get 3 and 2
    )
    metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    with (tmp_path / "run" / "per_image.csv").open() as file:
        return metrics, sorted(csv.DictReader(file), key=lambda row: row["id"])


def test_ddp_per_image_results_gather_every_rank(tmp_path, data_dir):
    single, single_rows = run_test_stage(tmp_path / "one", data_dir, "cpu")
    double, double_rows = run_test_stage(tmp_path / "two", data_dir, "ddp_sim")
    assert len(single_rows) == 5 and len({r["id"] for r in single_rows}) == 5
    assert double_rows == single_rows  # every image once, with the same values
    single.pop("test/loss"), double.pop("test/loss")  # per-batch Dice term: batches differ
    assert "test/hd95" in single and 0.0 < single["test/iou"] < 1.0
    assert double == pytest.approx(single, abs=1e-6)


def test_a_nan_loss_in_one_process_stops_every_process_in_one_paragraph(tmp_path, data_dir):
    """The ranks agree before the optimizer step (an all-reduce started before the backward
    pass): none waits for another that has stopped, and the NaN reaches no weights."""
    trainer, module, datamodule = untrained_demo(
        tmp_path,
        data_dir,
        "ddp_sim",
        "+callbacks.nonfinite._target_=lightseg.callbacks.StopOnNonFiniteLoss",
        "+callbacks.poison._target_=tests.runs.PoisonAt",
        "+callbacks.poison.epoch=0",
        "+callbacks.poison.batch_idx=1",
        "+callbacks.poison.rank=1",
        "trainer.max_epochs=1",
    )
    with pytest.raises(Exception) as stopped:  # from the spawned processes
        trainer.fit(module, datamodule=datamodule)
    assert user_message(stopped.value) == (
        "Training stopped: the loss became NaN at global step 1 (epoch 0, batch 1). No "
        "checkpoint had been saved yet; nothing after it was saved. Usual fixes: a lower "
        "optimizer.lr, trainer.gradient_clip_val=1.0, trainer.precision=32-true instead of "
        "16-mixed, or masks holding values other than class indices and 255."
    )

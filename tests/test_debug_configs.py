"""The debug group: each config composes with an experiment and does what its name says."""

from __future__ import annotations

import logging

import pandas as pd
import pytest

from lightseg.tools.plot import read_csv_log
from lightseg.train import train
from tests.conftest import make_config

pytestmark = pytest.mark.usefixtures("one_thread")
DEMO = (
    "experiment=demo",
    "trainer.accelerator=cpu",
    "data.image_size=[64,64]",
    "data.source.num_cases=20",
    "data.num_workers=0",
    "data.batch_size=2",  # 12 training images: 6 batches per epoch
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
)


def logged(run) -> pd.DataFrame:
    return read_csv_log(run)


def test_fdr_runs_one_batch_of_each_stage(tmp_path, data_dir):
    metrics = train(make_config(tmp_path, *DEMO, "debug=fdr", data_dir=data_dir))
    assert {"val/dice", "test/dice"} <= metrics.keys()
    assert not (tmp_path / "run" / "checkpoints").exists()  # Lightning's fast_dev_run saves none
    assert not (tmp_path / "run" / "csv").exists()  # fdr switches loggers off


def test_limit_caps_batches_per_epoch(tmp_path, data_dir):
    cfg = make_config(
        tmp_path, *DEMO, "debug=limit", "trainer.max_epochs=2", "logger=csv", data_dir=data_dir
    )
    train(cfg)
    steps = logged(tmp_path / "run").dropna(subset=["train/loss_epoch"])
    assert steps["step"].tolist() == [4, 9]  # 5 of 6 batches per epoch (0-based last step)


def test_overfit_repeats_the_same_few_batches_and_the_loss_falls(tmp_path, data_dir):
    cfg = make_config(
        tmp_path, *DEMO, "debug=overfit", "trainer.max_epochs=10", "logger=csv", data_dir=data_dir
    )
    train(cfg)
    losses = logged(tmp_path / "run").dropna(subset=["train/loss_epoch"])
    assert losses["step"].tolist()[-1] == 29  # 3 batches x 10 epochs
    first, last = losses["train/loss_epoch"].iloc[0], losses["train/loss_epoch"].iloc[-1]
    assert last < 0.8 * first


def test_profiler_reports_where_time_goes(tmp_path, data_dir, caplog):
    cfg = make_config(
        tmp_path,
        *DEMO,
        "debug=profiler",
        "trainer.limit_train_batches=2",
        "logger=none",
        data_dir=data_dir,
    )
    with caplog.at_level(logging.INFO):
        train(cfg)
    assert "FIT Profiler Report" in caplog.text
    assert "run_training_batch" in caplog.text

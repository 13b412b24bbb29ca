"""make lr-find: Lightning's range test on an experiment, its curve and suggestion on disk."""

from __future__ import annotations

import itertools
import json
import math
import sys

import pytest
from hydra.core.global_hydra import GlobalHydra
from PIL import Image

from lightseg.lr_find import main, steepest_fall
from tests.conftest import EXPERIMENTS


def run_lr_find(monkeypatch, *args: str) -> None:
    monkeypatch.setattr(sys, "argv", ["lightseg.lr_find", *args])
    try:
        main()
    finally:
        GlobalHydra.instance().clear()


def test_range_test_writes_the_curve_and_a_suggestion(
    monkeypatch, tmp_path, data_dir, one_thread, capsys
):
    steps, low, high = 16, 1e-5, 1e-1  # the suggestion skips the first 10
    run_lr_find(
        monkeypatch,
        "experiment=demo",
        "trainer.accelerator=cpu",
        "data.num_workers=0",
        "data.batch_size=4",
        "data.image_size=32",
        "data.source.num_cases=20",
        "model.encoder_name=resnet18",
        "data.mean=auto",  # resolved from the training split, as train resolves it
        "data.std=auto",
        f"lr_find.num_training={steps}",
        f"lr_find.min_lr={low}",
        f"lr_find.max_lr={high}",
        "lr_find.early_stop_threshold=null",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    (folder,) = (tmp_path / "logs" / "demo" / "lr_find").iterdir()
    result = json.loads((folder / "lr_find.json").read_text())
    lrs = result["lr"]
    assert len(lrs) == len(result["loss"]) == steps
    # from min_lr to max_lr in exponential steps: a constant ratio between neighbours
    assert lrs[0] == pytest.approx(low) and lrs[-1] == pytest.approx(high)
    ratios = [b / a for a, b in itertools.pairwise(lrs[1:])]
    assert all(r == pytest.approx(ratios[0]) for r in ratios) and ratios[0] > 1
    assert all(loss is not None and math.isfinite(loss) for loss in result["loss"])
    assert result["suggestion"] in lrs and result["settings"]["num_training"] == steps
    assert result["suggestion"] == steepest_fall(lrs, result["loss"], "exponential")
    assert Image.open(folder / "lr_find.png").size[0] > 300
    assert not list(folder.glob(".lr_find_*.ckpt"))  # the tuner's temporary checkpoint is gone
    out = capsys.readouterr().out
    assert f"optimizer.lr={result['suggestion']:.2g}" in out and str(folder / "lr_find.png") in out


def test_a_mistyped_lr_find_key_is_a_clear_error(monkeypatch, capsys):
    with pytest.raises(SystemExit) as stopped:
        run_lr_find(monkeypatch, "lr_find.num_trainin=5")
    assert stopped.value.code == 1
    assert "lr_find.num_training" in capsys.readouterr().err


def test_the_suggestion_is_the_steepest_fall_per_decade():
    # loss = 1 - tanh(log10(lr) + 3): it falls fastest per decade at lr = 1e-3
    lrs = [10 ** (-6 + k / 10) for k in range(61)]
    losses = [1 - math.tanh(math.log10(lr) + 3) for lr in lrs]
    assert steepest_fall(lrs, losses, "exponential") == pytest.approx(1e-3)
    # against lr itself the slope is steepest at the smallest rates (Lightning issue #21141)
    linear = steepest_fall(lrs, losses, "linear")
    assert linear == pytest.approx(lrs[10]) == pytest.approx(1e-5)  # the first one not skipped
    assert steepest_fall(lrs[:12], losses[:12], "exponential") is None  # 10 skipped, 1 left
    losses[40] = None  # a diverged step
    assert steepest_fall(lrs, losses, "exponential") == pytest.approx(1e-3)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_takes_a_range_test_with_auto_statistics(
    experiment, monkeypatch, tmp_path, data_dir, one_thread
):
    """Each shipped experiment, its mean and std resolved from the training split as train
    resolves them (the copy of the assembly that skipped this ended in a traceback)."""
    run_lr_find(
        monkeypatch,
        f"experiment={experiment}",
        "trainer.accelerator=cpu",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.image_size=[64,64]",
        "model.encoder_weights=null",
        "data.mean=auto",
        "data.std=auto",
        "lr_find.num_training=3",
        "lr_find.max_lr=1e-3",
        "lr_find.early_stop_threshold=null",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    (result,) = (tmp_path / "logs").glob("*/lr_find/*/lr_find.json")
    losses = json.loads(result.read_text())["loss"]
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)

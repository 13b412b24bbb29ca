"""The PH2/MADS recipe: its warm-up schedule, its augmentations, and what resuming it allows."""

from __future__ import annotations

import itertools
import signal

import albumentations as A
import pytest
import torch
from hydra.utils import instantiate

from lightseg.config import plain
from tests.conftest import make_config
from tests.runs import run_cli, tiny_cli_run

RECIPES = ("ph2_unet", "ph2_fpn", "ph2_deeplabv3plus", "ph2_segnet", "mads_unet", "demo")


def test_one_cycle_warms_up_to_the_peak_then_anneals(tmp_path):
    cfg = make_config(tmp_path, "experiment=demo")
    settings = plain(cfg.scheduler.scheduler)
    optimizer = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=cfg.optimizer.lr)
    scheduler = instantiate(settings, optimizer=optimizer, total_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = 2e-3
    assert lrs[0] == pytest.approx(peak / 25)  # div_factor
    assert max(lrs) == pytest.approx(peak) and lrs.index(max(lrs)) == 14  # 15 % warm-up
    assert lrs[-1] == pytest.approx(peak / 25 / 1e4, rel=0.05)  # final_div_factor
    assert all(a < b for a, b in itertools.pairwise(lrs[:15]))  # up, then down
    assert all(a > b for a, b in itertools.pairwise(lrs[14:]))


@pytest.mark.parametrize("experiment", RECIPES)
def test_recipes_warm_up_and_augment_with_flips_rotations_scale_and_colour(tmp_path, experiment):
    cfg = make_config(tmp_path, f"experiment={experiment}", data_dir=tmp_path)
    assert cfg.scheduler.scheduler._target_.endswith("OneCycleLR")
    assert cfg.scheduler.scheduler.pct_start == 0.15
    assert cfg.data.cache.enabled is True and cfg.data.cache.scale >= 1.5
    train = [type(t) for t in instantiate(cfg.data.transforms.train)]
    assert A.HorizontalFlip in train and A.ColorJitter in train
    affine = next(t for t in cfg.data.transforms.train if t._target_.endswith("Affine"))
    assert affine.rotate[1] >= 10 and affine.scale[0] < 1 < affine.scale[1]


def test_the_folder_recipe_shares_the_schedule_and_augments_any_channel_count(tmp_path):
    cfg = make_config(tmp_path, "experiment=folder_unet", data_dir=tmp_path)
    assert cfg.scheduler.scheduler._target_.endswith("OneCycleLR") and cfg.optimizer.lr == 1e-3
    assert cfg.data.batch_size == 8 and cfg.data.cache.enabled is True and cfg.data.cache.scale == 2
    train = [type(t) for t in instantiate(cfg.data.transforms.train)]
    assert A.HorizontalFlip in train and A.RandomBrightnessContrast in train
    assert A.ColorJitter not in train  # RGB only: the folder may hold grayscale or bands
    affine = next(t for t in cfg.data.transforms.train if t._target_.endswith("Affine"))
    assert affine.rotate[1] >= 10 and affine.scale[0] < 1 < affine.scale[1]


def test_a_one_cycle_run_resumed_with_more_epochs_is_refused(
    tmp_path, data_dir, monkeypatch, one_thread, capsys
):
    args = [*tiny_cli_run(tmp_path, data_dir), "trainer.max_epochs=2"]
    kill = ["+callbacks.kill._target_=tests.runs.SignalAt", "+callbacks.kill.epoch=1"]
    with pytest.raises(SystemExit) as stopped:
        run_cli(monkeypatch, *args, *kill, "+callbacks.kill.batch_idx=0")
    assert stopped.value.code == 128 + signal.SIGTERM
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        run_cli(
            monkeypatch, *tiny_cli_run(tmp_path, data_dir), "ckpt_path=last", "trainer.max_epochs=3"
        )
    assert refused.value.code == 1
    message = capsys.readouterr().err
    assert "made for 2 steps, but training now lasts 3" in message and "Traceback" not in message

"""Checkpoint files are all-or-nothing; random states survive a checkpoint round trip; a
checkpoint alone rebuilds its model, and what it holds is checked."""

from __future__ import annotations

import builtins
import random

import numpy as np
import pytest
import torch

from lightseg import checkpoints
from lightseg.checkpoints import (
    AtomicCheckpointIO,
    atomic_save,
    check_readable,
    load_module,
    random_states,
    read_checkpoint,
    remove_partial_files,
    set_random_states,
)
from lightseg.errors import LightsegError
from lightseg.runs import RunFolder
from tests.runs import full_disk_open, run_cli, tiny_cli_run


def test_interrupted_write_keeps_the_old_file_and_leaves_no_part(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"step": 1}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}

    def killed_midway(obj, file):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # e.g. a second Ctrl+C while writing

    monkeypatch.setattr(checkpoints.torch, "save", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_a_full_disk_while_saving_is_one_paragraph_and_keeps_the_old_checkpoint(
    tmp_path, monkeypatch
):
    path = tmp_path / "last.ckpt"
    atomic_save({"step": 1, "weights": torch.ones(10)}, path)
    monkeypatch.setattr(checkpoints, "open", full_disk_open, raising=False)
    with pytest.raises(LightsegError) as raised:  # torch.save: "unexpected pos", from ENOSPC
        atomic_save({"step": 2, "weights": torch.zeros(100_000)}, path)
    message = str(raised.value)
    assert f"could not be written in '{tmp_path}'" in message
    assert "about 390.6 KiB needed" in message and "paths.log_dir" in message
    assert torch.load(path, weights_only=True)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_a_disk_that_fills_during_training_ends_in_one_paragraph_with_last_ckpt_intact(
    tmp_path, data_dir, monkeypatch, capsys
):
    monkeypatch.setattr(checkpoints, "open", builtins.open, raising=False)  # undone after
    args = [*tiny_cli_run(tmp_path, data_dir), "trainer.max_epochs=2"]
    fill = ["+callbacks.full._target_=tests.runs.DiskFullFrom", "+callbacks.full.epoch=1"]
    with pytest.raises(SystemExit) as exited:
        run_cli(monkeypatch, *args, *fill)
    assert exited.value.code == 1
    error = capsys.readouterr().err
    (folder,) = (tmp_path / "logs" / "demo" / "runs").iterdir()
    run = RunFolder(folder)
    assert "lightseg: error: The disk is full: checkpoint" in error, error[-2000:]
    assert f"in '{run.last.parent}'" in error and "Traceback" not in error
    saved = torch.load(run.last, weights_only=True)
    assert saved["epoch"] == 0 and "optimizer_states" in saved  # epoch 0's, whole
    assert sorted(p.name for p in run.last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert run.status == "failed"


def test_another_processs_part_is_left_alone_until_a_resume_clears_it(tmp_path):
    other = tmp_path / ".last.ckpt.partial-999"  # maybe a live writer: not ours to delete
    other.write_bytes(b"truncated")
    atomic_save({"step": 3}, tmp_path / "last.ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "last.ckpt"]
    remove_partial_files(tmp_path)  # resuming, with the run's lock held
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_torn_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "last.ckpt"
    atomic_save({"step": 3, "weights": torch.zeros(1000)}, path)
    check_readable(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # cut off while copied
    with pytest.raises(LightsegError, match=r"last.ckpt' is damaged .*best.ckpt"):
        check_readable(path)


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    atomic_save({"rng": random_states()}, tmp_path / "x.ckpt")
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    set_random_states(torch.load(tmp_path / "x.ckpt", weights_only=True)["rng"])
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert [random.random() for _ in range(3)] == expected[2]


def test_checkpoint_alone_rebuilds_the_trained_model(demo_checkpoint):
    checkpoint = torch.load(demo_checkpoint, map_location="cpu", weights_only=True)
    module = load_module(demo_checkpoint)
    assert module.task.classes == ("background", "lesion")
    assert module.hparams.inference == {"image_size": [64, 64], "mode": "whole"}
    assert module.hparams.model["arch"] == "Unet"
    for name, value in module.state_dict().items():
        if name in checkpoint["state_dict"]:
            assert torch.equal(value, checkpoint["state_dict"][name]), name
    assert not module.training


def test_missing_and_foreign_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(LightsegError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.ckpt")
    for empty in (None, "", " "):  # ckpt_path=null, ckpt_path= on the command line
        with pytest.raises(LightsegError, match="ckpt_path is empty: give a checkpoint file"):
            read_checkpoint(empty)
    with pytest.raises(LightsegError, match=r"ckpt_path='.*' is a folder; give a checkpoint"):
        read_checkpoint(tmp_path)
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(LightsegError, match="Cannot read checkpoint"):
        read_checkpoint(tmp_path / "text.ckpt")
    torch.save({"state_dict": {}, "hyper_parameters": {"lr": 0.1}}, tmp_path / "other.ckpt")
    with pytest.raises(LightsegError, match="not a lightseg checkpoint"):
        read_checkpoint(tmp_path / "other.ckpt")
    old = {"model": {"arch": "Unet"}, "classes": ["a", "b"], "normalization": {}}
    torch.save({"state_dict": {}, "hyper_parameters": old}, tmp_path / "old.ckpt")
    with pytest.raises(LightsegError, match=r"lightseg 0\.1"):
        read_checkpoint(tmp_path / "old.ckpt")

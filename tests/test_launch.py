"""The command line before Hydra: override mistakes explained, resume requests resolved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lightseg.errors import LightsegError
from lightseg.launch import closest, prepare_arguments


@pytest.mark.parametrize(
    ("override", "hydra_says", "we_suggest"),
    [
        ("trainer.max_epoch=3", "Could not override 'trainer.max_epoch'", "'trainer.max_epochs'"),
        ("model.encoder=resnet18", "Could not override 'model.encoder'", "'model.encoder_name'"),
        ("los=dice", "Could not override 'los'", "'loss'"),
        ("loss=dicee", "Could not find 'loss/dicee'", "loss=dice?"),
        ("~trainer.max_epoch", "Could not delete from config", "'trainer.max_epochs'"),
    ],
)
def test_bad_override_gets_hydras_message_and_the_closest_valid_key(
    override, hydra_says, we_suggest
):
    with pytest.raises(LightsegError) as error:
        prepare_arguments(["experiment=demo", override])
    assert hydra_says in str(error.value)
    assert f"Did you mean {we_suggest}" in str(error.value)


def test_sweep_values_are_checked_with_their_first_choice():
    with pytest.raises(LightsegError, match=r"Did you mean 'model\.arch'"):
        prepare_arguments(["-m", "seed=0,1", "model.archh=Unet,FPN"])


def test_valid_arguments_pass_unchanged_with_multirun_flag_first():
    args = ["experiment=demo", "-m", "seed=0,1", "model.arch=Unet,FPN"]
    assert prepare_arguments(args) == ["-m", "experiment=demo", "seed=0,1", "model.arch=Unet,FPN"]
    assert prepare_arguments(["--cfg", "job", "x=1"]) == ["--cfg", "job", "x=1"]  # Hydra's flags


def test_closest_prefers_the_whole_key_then_the_last_part():
    keys = ["trainer", "trainer.max_epochs", "optimizer.lr", "callbacks.x.every_n_epochs"]
    assert closest("trainer.max_epoch", keys) == "trainer.max_epochs"
    assert closest("epochs", keys) == "trainer.max_epochs"
    assert closest("batch", keys) is None


def make_run(runs: Path, name: str, overrides=(), status=None, checkpoint=True, finished=False):
    run = runs / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    if checkpoint:
        (run / "checkpoints").mkdir()
        (run / "checkpoints" / "last.ckpt").write_bytes(b"x")
    if finished:
        (run / "metrics.json").write_text("{}")
    if status:
        (run / "run_info.json").write_text(json.dumps({"status": status}))
    return run


@pytest.fixture
def logs(tmp_path: Path) -> Path:
    runs = tmp_path / "logs" / "demo" / "runs"
    make_run(runs, "2024-01-01_00-00-00", finished=True)
    make_run(runs, "2024-01-02_00-00-00", ["experiment=demo", "model.arch=FPN", "ckpt_path=x"])
    make_run(runs, "2024-01-03_00-00-00", status="failed")  # e.g. stopped by a NaN loss
    make_run(runs, "2024-01-04_00-00-00", checkpoint=False)  # killed before its first checkpoint
    return tmp_path / "logs"


def test_ckpt_path_last_continues_the_newest_unfinished_run_in_its_folder(logs):
    run = logs / "demo" / "runs" / "2024-01-02_00-00-00"
    args = ["experiment=demo", f"paths.log_dir={logs}", "ckpt_path=last", "trainer.max_epochs=5"]
    assert prepare_arguments(args) == [
        "model.arch=FPN",  # the run's own overrides come back; ckpt_path=x does not
        "experiment=demo",
        f"paths.log_dir={logs}",
        "trainer.max_epochs=5",
        f"ckpt_path='{run}/checkpoints/last.ckpt'",
        f"hydra.run.dir='{run}'",
    ]
    auto = prepare_arguments(["experiment=demo", f"paths.log_dir={logs}", "resume=auto"])
    assert auto[-1] == f"hydra.run.dir='{run}'"


def test_checkpoint_inside_a_run_folder_continues_that_folder(logs):
    run = logs / "demo" / "runs" / "2024-01-01_00-00-00"
    args = prepare_arguments([f"ckpt_path={run}/checkpoints/last.ckpt"])
    assert args[-2:] == [f"ckpt_path='{run}/checkpoints/last.ckpt'", f"hydra.run.dir='{run}'"]


def test_resume_auto_without_an_unfinished_run_starts_fresh(tmp_path):
    args = ["experiment=demo", f"paths.log_dir={tmp_path}", "resume=auto"]
    assert prepare_arguments(args) == args


def test_ckpt_path_last_without_an_unfinished_run_says_so(tmp_path):
    make_run(tmp_path / "demo" / "runs", "2024-01-01_00-00-00", finished=True)
    with pytest.raises(LightsegError, match="no unfinished run of experiment 'demo'"):
        prepare_arguments(["experiment=demo", f"paths.log_dir={tmp_path}", "ckpt_path=last"])


def test_missing_checkpoint_and_resume_in_a_sweep_are_clear_errors(tmp_path):
    with pytest.raises(LightsegError, match=r"ckpt_path='.*nope\.ckpt' does not exist"):
        prepare_arguments([f"ckpt_path={tmp_path}/nope.ckpt"])
    with pytest.raises(LightsegError, match="continue a single run, not a sweep"):
        prepare_arguments(["-m", "seed=0,1", "resume=auto"])
    with pytest.raises(LightsegError, match="resume=yes is not an option"):
        prepare_arguments(["resume=yes"])

"""The command line before Hydra: override mistakes explained, resume requests resolved."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from lightseg.errors import LightsegError
from lightseg.launch import closest, prepare_arguments
from lightseg.runs import RunLock
from lightseg.runs.resume import new_run_folder


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
    # the arguments stay as typed: the run's own config comes from its .hydra/ record, and
    # that record is not rewritten (output_subdir=null)
    assert prepare_arguments(args) == [*args, f"hydra.run.dir='{run}'", "hydra.output_subdir=null"]
    auto = prepare_arguments(["experiment=demo", f"paths.log_dir={logs}", "resume=auto"])
    assert auto[-2:] == [f"hydra.run.dir='{run}'", "hydra.output_subdir=null"]


def test_checkpoint_inside_a_run_folder_continues_that_folder(logs):
    run = logs / "demo" / "runs" / "2024-01-01_00-00-00"
    args = prepare_arguments([f"ckpt_path={run}/checkpoints/last.ckpt"])
    assert args[-2:] == [f"hydra.run.dir='{run}'", "hydra.output_subdir=null"]


def test_a_checkpoint_from_elsewhere_trains_on_in_a_new_folder(tmp_path):
    lone = tmp_path / "downloaded.ckpt"
    lone.write_bytes(b"x")
    args = prepare_arguments([f"paths.log_dir={tmp_path}", f"ckpt_path={lone}"])
    new = Path(args[-1].split("=", 1)[1].strip("'"))
    assert new.parent == tmp_path / "default" / "runs" and new.is_dir()


def test_resume_auto_without_an_unfinished_run_starts_fresh(tmp_path):
    args = ["experiment=demo", f"paths.log_dir={tmp_path}", "resume=auto"]
    prepared = prepare_arguments(args)
    assert prepared[:-1] == args and prepared[-1].startswith("hydra.run.dir=")
    assert Path(prepared[-1].split("=", 1)[1].strip("'")).parent == tmp_path / "demo" / "runs"


def test_new_run_folders_never_collide(tmp_path):
    same_second = datetime(2026, 1, 2, 3, 4, 5)
    folders = [new_run_folder(tmp_path, same_second) for _ in range(3)]
    assert [f.name for f in folders] == [
        "2026-01-02_03-04-05",
        "2026-01-02_03-04-05_2",
        "2026-01-02_03-04-05_3",
    ]
    assert all(f.is_dir() for f in folders)
    args = ["experiment=demo", f"paths.log_dir={tmp_path}"]
    assert len({prepare_arguments(args)[-1] for _ in range(3)}) == 3  # from the command line


def test_an_explicit_run_folder_is_used_as_given(logs, tmp_path):
    run = logs / "demo" / "runs" / "2024-01-02_00-00-00"
    args = ["experiment=demo", f"paths.log_dir={logs}", f"hydra.run.dir={run}", "resume=auto"]
    assert prepare_arguments(args) == [*args, "hydra.output_subdir=null"]  # continues it
    fresh = tmp_path / "slurm-123"
    args = ["experiment=demo", f"paths.log_dir={logs}", f"hydra.run.dir={fresh}", "resume=auto"]
    assert prepare_arguments(args) == args  # nothing there yet: a fresh start in that folder


def test_a_run_held_by_a_live_process_is_never_taken_over(logs):
    newest_unfinished = logs / "demo" / "runs" / "2024-01-02_00-00-00"
    with RunLock(newest_unfinished):
        older = make_run(logs / "demo" / "runs", "2023-12-31_00-00-00")
        auto = prepare_arguments(["experiment=demo", f"paths.log_dir={logs}", "resume=auto"])
        assert auto[-2] == f"hydra.run.dir='{older}'"  # the live one is skipped
        explicit = f"hydra.run.dir={newest_unfinished}"
        with pytest.raises(LightsegError, match=r"in use by a training process .*PID"):
            prepare_arguments(["experiment=demo", explicit, "resume=auto"])


def test_one_process_of_a_multi_process_launch_needs_an_explicit_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "4")
    with pytest.raises(LightsegError, match=r"one of 4 processes"):
        prepare_arguments([f"paths.log_dir={tmp_path}"])
    explicit = [f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/job-7"]
    assert prepare_arguments(explicit) == explicit


def test_ckpt_path_last_without_an_unfinished_run_says_so(tmp_path):
    make_run(tmp_path / "demo" / "runs", "2024-01-01_00-00-00", finished=True)
    with pytest.raises(LightsegError, match="no unfinished run of experiment 'demo'"):
        prepare_arguments(["experiment=demo", f"paths.log_dir={tmp_path}", "ckpt_path=last"])


def test_missing_checkpoint_and_bad_resume_value_are_clear_errors(tmp_path):
    with pytest.raises(LightsegError, match=r"ckpt_path='.*nope\.ckpt' does not exist"):
        prepare_arguments([f"ckpt_path={tmp_path}/nope.ckpt"])
    with pytest.raises(LightsegError, match="resume=yes is not an option"):
        prepare_arguments(["resume=yes"])

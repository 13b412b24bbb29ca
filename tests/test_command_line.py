"""The command line: Hydra's app with nothing in front; its mistakes explained on the failure
path; the run folder and what a run continues from, decided in lightseg.runs.resume."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from lightseg import CONFIG_DIR
from lightseg.config import closest, compose_config, explain
from lightseg.errors import LightsegError
from lightseg.runs import RunFolder, RunLock
from lightseg.runs.resume import (
    checkpoint_for,
    continuation,
    continued_run,
    hydra_record,
    new_run_folder,
    run_folder,
)
from tests.runs import run_app
from tests.test_faults import environment

REPOSITORY = Path(CONFIG_DIR).parent


def explained(*overrides: str) -> str:
    """What the command line says when Hydra cannot compose ``overrides``."""
    with pytest.raises(HydraException) as error:
        compose_config(overrides)
    return explain(error.value, list(overrides), "train")


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
def test_a_bad_override_gets_hydras_message_and_the_closest_valid_key(
    override, hydra_says, we_suggest
):
    message = explained("experiment=demo", override)
    assert hydra_says in message
    assert f"Did you mean {we_suggest}" in message


def test_a_key_of_another_option_of_its_group_names_the_options_that_have_it():
    message = explained("data=ph2", "data.source.mask_pattern='{stem}_mask'")
    assert "data.source.mask_pattern is a setting of data=folder, not of data=ph2." in message
    assert "Did you mean" not in message
    message = explained("experiment=demo", "recipe.lr_find=true")  # the group has no default
    assert "recipe.lr_find is a setting of recipe=auto, and no recipe is chosen." in message


def test_closest_prefers_the_whole_key_then_the_last_part():
    keys = ["trainer", "trainer.max_epochs", "optimizer.lr", "callbacks.x.every_n_epochs"]
    assert closest("trainer.max_epoch", keys) == "trainer.max_epochs"
    assert closest("epochs", keys) == "trainer.max_epochs"
    assert closest("batch", keys) is None


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightseg.train", *args, f"paths.log_dir={tmp_path / 'logs'}"],
        cwd=REPOSITORY,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("args", "suggestion"),
    [
        (("experiment=demo", "trainer.max_epoch=3"), "Did you mean 'trainer.max_epochs'?"),
        (("-m", "seed=0,1", "model.archh=Unet,FPN"), "Did you mean 'model.arch'?"),
    ],
)
def test_the_command_line_ends_a_mistake_in_one_paragraph(tmp_path, args, suggestion):
    done = cli(tmp_path, *args)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and suggestion in done.stderr
    assert done.stderr.startswith("lightseg: error: Could not override")
    assert not list((tmp_path / "logs").rglob("*.ckpt")) + list((tmp_path / "logs").rglob("*.json"))


@pytest.mark.parametrize(
    ("module", "typo", "suggestion"),
    [
        ("lightseg.train", "trainer.max_epoch=3", "'trainer.max_epochs'"),
        ("lightseg.lr_find", "lr_find.num_trainin=5", "'lr_find.num_training'"),
        ("lightseg.tools.eval", "splt=val", "'split'"),
        ("lightseg.tools.predict", "outptu=x", "'output'"),
        ("lightseg.tools.export", "opst=17", "'opset'"),
        ("lightseg.tools.publish", "push_to_hbu=true", "'push_to_hub'"),
        ("lightseg.tools.table", "digit=2", "'digits'"),
        ("lightseg.tools.plot", "curve=[]", "'curves'"),
        ("lightseg.tools.bundle", "outptu=x.tar.gz", "'output'"),
        ("lightseg.tools.verify", "tolerence=0.1", "'tolerance'"),
        ("lightseg.data.download", "data=ph22", "data=ph2?"),
    ],
)
def test_every_entry_point_explains_a_typo_in_one_paragraph(module, typo, suggestion, capsys):
    """One command-line style: each tool is a lightseg.config.app."""
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as exit_:
        run_app(main, typo)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("lightseg: error: ") and "Traceback" not in err
    assert f"Did you mean {suggestion}" in err
    assert "HYDRA_FULL_ERROR" not in os.environ


# --- the run folder ---------------------------------------------------------------------------


def make_run(runs: Path, name: str, overrides=(), status=None, checkpoint=True, finished=False):
    run = runs / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    choices = {"hydra": {"runtime": {"choices": {"model": "unet_resnet18", "data": "demo"}}}}
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(choices))
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
    make_run(runs, "2024-01-02_00-00-00", ["experiment=demo", "model.arch=FPN", "seed=3"])
    make_run(runs, "2024-01-03_00-00-00", status="failed")  # e.g. stopped by a NaN loss
    make_run(runs, "2024-01-04_00-00-00", checkpoint=False)  # killed before its first checkpoint
    return tmp_path / "logs"


def test_ckpt_path_last_and_resume_auto_continue_the_newest_unfinished_run(logs):
    run = logs / "demo" / "runs" / "2024-01-02_00-00-00"
    assert run_folder(logs, "demo", "last", None) == str(run)
    assert run_folder(logs, "demo", None, "auto") == str(run)
    assert hydra_record(run, "last", None) is None  # its .hydra/ record stays as it was
    assert checkpoint_for("last", None, RunFolder(run)) == str(run / "checkpoints/last.ckpt")


def test_a_checkpoint_or_a_folder_continues_its_own_run(logs):
    run = logs / "demo" / "runs" / "2024-01-01_00-00-00"
    checkpoint = run / "checkpoints" / "last.ckpt"
    assert run_folder(logs, "demo", str(checkpoint), None) == str(run)
    assert run_folder(logs, "demo", str(run), None) == str(run)
    assert checkpoint_for(str(run), None, RunFolder(run)) == str(checkpoint)
    with pytest.raises(LightsegError, match=r"folder without checkpoints/last\.ckpt"):
        continued_run(logs, "demo", str(logs / "demo" / "runs" / "2024-01-04_00-00-00"), None)


def test_a_checkpoint_from_elsewhere_trains_on_in_a_new_folder(tmp_path):
    lone = tmp_path / "downloaded.ckpt"
    lone.write_bytes(b"x")
    folder = Path(run_folder(tmp_path, "default", str(lone), None))
    assert folder.parent == tmp_path / "default" / "runs" and folder.is_dir()
    assert hydra_record(folder, str(lone), None) == ".hydra"  # a new run: Hydra records it
    assert checkpoint_for(str(lone), None, RunFolder(folder)) == str(lone)


def test_resume_auto_without_an_unfinished_run_starts_fresh(tmp_path):
    folder = Path(run_folder(tmp_path, "demo", None, "auto"))
    assert folder.parent == tmp_path / "demo" / "runs" and list(folder.iterdir()) == []
    assert checkpoint_for(None, "auto", RunFolder(folder)) is None


def test_new_run_folders_never_collide(tmp_path):
    same_second = datetime(2026, 1, 2, 3, 4, 5)
    folders = [new_run_folder(tmp_path, same_second) for _ in range(3)]
    names = ["2026-01-02_03-04-05", "2026-01-02_03-04-05_2", "2026-01-02_03-04-05_3"]
    assert [f.name for f in folders] == names


def test_hydra_asks_for_the_run_folder_once_per_composition(tmp_path):
    def compose_run_dir():
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("train", [f"paths.log_dir={tmp_path}"], return_hydra_config=True)
        return [OmegaConf.select(cfg, "hydra.run.dir") for _ in range(3)]

    first, second = compose_run_dir(), compose_run_dir()
    assert len(set(first)) == 1 and len(set(second)) == 1 and first[0] != second[0]
    assert len(list((tmp_path / "default" / "runs").iterdir())) == 2


def test_a_run_held_by_a_live_process_is_never_taken_over(logs):
    newest_unfinished = logs / "demo" / "runs" / "2024-01-02_00-00-00"
    with RunLock(newest_unfinished):
        older = make_run(logs / "demo" / "runs", "2023-12-31_00-00-00")
        assert run_folder(logs, "demo", None, "auto") == str(older)  # the live one is skipped
        with pytest.raises(LightsegError, match=r"in use by a training process .*PID"):
            run_folder(logs, "demo", str(newest_unfinished), None)


def test_one_process_of_a_multi_process_launch_needs_an_explicit_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_NTASKS", "4")
    with pytest.raises(LightsegError, match=r"one of 4 processes"):
        run_folder(tmp_path, "demo", None, None)


def test_ckpt_path_last_without_an_unfinished_run_says_so(tmp_path):
    make_run(tmp_path / "demo" / "runs", "2024-01-01_00-00-00", finished=True)
    with pytest.raises(LightsegError, match="no unfinished run of experiment 'demo'"):
        run_folder(tmp_path, "demo", "last", None)


def test_missing_checkpoint_and_bad_resume_value_are_clear_errors(tmp_path):
    with pytest.raises(LightsegError, match=r"ckpt_path='.*nope\.ckpt' does not exist"):
        run_folder(tmp_path, "demo", str(tmp_path / "nope.ckpt"), None)
    with pytest.raises(LightsegError, match="resume=yes is not an option"):
        run_folder(tmp_path, "demo", None, "yes")


def test_a_continued_run_is_composed_from_its_own_overrides_plus_the_new_values(logs):
    run = RunFolder(logs / "demo" / "runs" / "2024-01-02_00-00-00")
    typed = ["experiment=demo", "ckpt_path=last", "trainer.max_epochs=20", "seed=4"]
    assert continuation(run, typed) == [
        "model.arch=FPN",  # the run's own: not today's default
        "experiment=demo",
        "trainer.max_epochs=20",
        "seed=4",  # this command's value wins
    ]
    assert continuation(run, ["experiment=demo", "model.arch=FPN", "seed=3", "resume=auto"]) is None
    with pytest.raises(LightsegError, match="cannot switch config group options"):
        continuation(run, ["model=segnet", "ckpt_path=last"])


@pytest.mark.usefixtures("one_thread")
def test_ckpt_path_last_alone_continues_the_run_as_it_was_composed(tmp_path, data_dir):
    """The command that continues names only the experiment: the run keeps its own settings
    (64 px, 2 epochs, seed 7), and run_info.json records the command as it was typed."""
    settings = [
        "experiment=demo",
        f"paths.data_dir={data_dir}",
        "trainer.max_epochs=2",
        "data.image_size=64",
        "data.num_workers=0",
        "data.source.num_cases=20",
        "logger=csv",
        "seed=7",
        "print_config=false",
        "+callbacks.kill._target_=tests.runs.SignalAt",
        "+callbacks.kill.epoch=1",
        "+callbacks.kill.batch_idx=0",
    ]
    stopped = cli(tmp_path, *settings)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    (folder,) = (tmp_path / "logs" / "demo" / "runs").iterdir()
    typed = ["experiment=demo", f"paths.data_dir={data_dir}", "ckpt_path=last"]
    done = cli(tmp_path, *typed)
    assert done.returncode == 0, done.stderr[-3000:]
    run = RunFolder(folder)
    assert json.loads(run.metrics.read_text())["best/epoch"] in (0, 1)
    assert OmegaConf.load(run.config).data.image_size == 64
    resumed = run.info()["resumes"][0]
    assert " ".join(typed) in resumed["command"]  # as typed, not as recomposed
    assert "data.image_size=64" in resumed["overrides"]
    assert os.path.samefile(resumed["checkpoint"], run.last)

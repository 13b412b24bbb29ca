"""make tune: workers sharing one journal file, pruning, a stop signal and a restart, the report's
reproduce command. Every worker is ``python -m lightseg.tools.tune`` in a process of its own,
and every trial a ``python -m lightseg.train`` process under it, as on a cluster."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf

from lightseg import CONFIG_DIR
from lightseg.callbacks.pruning import open_storage
from lightseg.config import compose_config
from lightseg.tools.tune import main as tune_main
from lightseg.tools.tune import setup
from tests.runs import run_app, run_cli
from tests.test_faults import REPOSITORY, environment, mark

COMPLETE, PRUNED, FAIL = (optuna.trial.TrialState[s] for s in ("COMPLETE", "PRUNED", "FAIL"))
PARAMS = ("optimizer.lr", "optimizer.weight_decay", "model.arch", "loss")
GOOD = {
    "optimizer.lr": 3e-3,
    "optimizer.weight_decay": 1e-4,
    "model.arch": "Unet",
    "loss": "ce_dice",
}


def overrides(tmp_path: Path, data_dir: Path, epochs: int = 1) -> list[str]:
    """A deterministic demo run of ``epochs`` epochs of 2 batches at 64 px; objective val/loss
    (it differs between any two trials, where the dice of so short a run is often 0)."""
    return [
        "experiment=demo",
        "trainer.accelerator=cpu",
        f"trainer.max_epochs={epochs}",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.deterministic=true",
        "logger=csv",
        "data.num_workers=0",
        "data.batch_size=4",
        "data.image_size=64",
        "data.source.num_cases=20",
        "print_config=false",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        "callbacks.prediction_overlays=null",
        "monitor=val/loss",
        "monitor_mode=min",
        "seed=3",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]


def worker(args: list[str], **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "lightseg.tools.tune", *args]
    return subprocess.Popen(
        command, cwd=REPOSITORY, env=environment(), text=True, stdout=subprocess.PIPE, **popen
    )


def study(tmp_path: Path, name: str = "demo") -> optuna.Study:
    journal = tmp_path / "logs" / "demo" / "studies" / f"{name}.log"
    return optuna.load_study(study_name=name, storage=open_storage(str(journal)))


def info(run: str | Path) -> dict:
    return json.loads((Path(run) / "run_info.json").read_text())


def test_the_default_search_space_names_existing_keys_and_options():
    cfg = compose_config(["experiment=demo", "search=default"])
    assert set(cfg.search.params) == set(PARAMS)
    assert (cfg.search.metric, cfg.search.direction, cfg.search.study) == (
        "val/dice",
        "max",
        "demo",
    )
    for key, space in cfg.search.params.items():
        group = Path(CONFIG_DIR) / key
        if group.is_dir():  # a config group: every option is a file
            assert all((group / f"{option}.yaml").is_file() for option in space.choices), key
        else:
            assert OmegaConf.select(cfg, key) is not None, key


def test_two_workers_share_one_study_and_the_best_trial_reproduces(
    one_thread, monkeypatch, tmp_path, data_dir
):
    args = [*overrides(tmp_path, data_dir), "search.n_trials=3"]
    workers = [worker(args), worker(args)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    trials = study(tmp_path).trials
    assert [(t.number, t.state) for t in trials] == [(0, COMPLETE), (1, COMPLETE), (2, COMPLETE)]
    # each worker ran its own trials, together all three, none twice
    ran = [
        {int(line.split()[1]) for line in o.splitlines() if line.startswith("Trial ")}
        for o in outputs
    ]
    assert ran[0] and ran[1] and not ran[0] & ran[1] and ran[0] | ran[1] == {0, 1, 2}
    for trial in trials:  # the run folder of each: its trial, its values, its objective
        run = Path(trial.user_attrs["run"])
        assert run == tmp_path / "logs" / "demo" / "studies" / "demo" / str(trial.number)
        assert info(run)["status"] == "finished" and info(run)["resumes"] == []
        assert json.loads((run / "trial.json").read_text())["params"] == trial.params
        assert json.loads((run / "metrics.json").read_text())["val/loss"] == trial.value
        assert sorted(trial.intermediate_values) == [0]  # one epoch reported
    best = min(trials, key=lambda t: t.value)

    run_app(tune_main, "report", *args)
    folder = tmp_path / "logs" / "demo" / "studies" / "demo"
    record = json.loads((folder / "best.json").read_text())
    assert record["trial"] == best.number and record["value"] == best.value
    assert (folder / "trials.csv").read_text().count("COMPLETE") == 3
    assert all(
        (folder / f"{plot}.png").stat().st_size > 1000 for plot in ("history", "intermediate")
    )
    command = shlex.split(record["command"])
    assert command[:3] == ["make", "train", "EXP=demo"] and command[3].startswith("ARGS=")
    # the make train command again, as make runs it: the best trial's number again
    run_cli(monkeypatch, "experiment=demo", *shlex.split(command[3].removeprefix("ARGS=")))
    (again,) = (tmp_path / "logs" / "demo" / "runs").iterdir()
    assert json.loads((again / "metrics.json").read_text())["val/loss"] == pytest.approx(
        best.value, abs=1e-6
    )


def test_a_bad_learning_rate_is_pruned_and_a_stopped_worker_is_continued(tmp_path, data_dir):
    # trial 0 as given, trial 1 with a planted learning rate 300 times too large (the weights
    # jump far: val/loss ~1e21 after its first epoch, finite), trial 2 as trial 0, stopped
    journal = tmp_path / "logs" / "demo" / "studies" / "demo.log"
    created = optuna.create_study(study_name="demo", storage=open_storage(str(journal)))
    created.enqueue_trial(GOOD)
    created.enqueue_trial({**GOOD, "optimizer.lr": 1.0})
    created.enqueue_trial(GOOD)  # the stopped one: its rerun equals trial 0, so the median keeps it
    signal_file = tmp_path / "marked"
    args = [*overrides(tmp_path, data_dir, epochs=2), "search.n_trials=3"]
    args += ["search.pruner.n_startup_trials=1", "search.pruner.n_warmup_steps=0"]
    args += [*mark(signal_file, 0, 0), "+callbacks.mark.sleep=0.5"]
    first = worker(args, start_new_session=True)
    for trial in range(3):  # the first batch of trials 0, 1, 2: let 0 and 1 go on, stop at 2's
        while not signal_file.exists():
            assert first.poll() is None
            time.sleep(0.05)
        if trial < 2:
            signal_file.unlink()
    os.killpg(first.pid, signal.SIGTERM)  # the worker and its trial, as a scheduler does
    assert first.wait(timeout=120) == 128 + signal.SIGTERM

    good, bad, stopped, queued = study(tmp_path).trials
    assert good.state == COMPLETE and sorted(good.intermediate_values) == [0, 1]
    assert bad.state == PRUNED and sorted(bad.intermediate_values) == [0]  # of 2 epochs
    assert bad.intermediate_values[0] > 1e3 * good.intermediate_values[0]  # the median's
    run = Path(bad.user_attrs["run"])
    assert info(run)["status"] == "pruned" and "pruned after epoch 0" in info(run)["message"]
    assert not (run / "metrics.json").exists()
    pruned = json.loads((run / "trial.json").read_text())
    assert pruned["status"] == "pruned" and pruned["exit_code"] == 0  # not a failure
    assert stopped.state == FAIL and info(stopped.user_attrs["run"])["status"] == "interrupted"
    assert queued.state == optuna.trial.TrialState.WAITING
    kept = (Path(good.user_attrs["run"]) / "metrics.json").read_text()

    restart = worker(args)  # the same command again: the stopped trial's values, then done
    assert restart.wait(timeout=300) == 0
    trials = study(tmp_path).trials
    assert [t.state for t in trials] == [COMPLETE, PRUNED, FAIL, COMPLETE]
    assert trials[3].params == stopped.params and trials[3].user_attrs["retry_of"] == 2
    assert (Path(good.user_attrs["run"]) / "metrics.json").read_text() == kept
    assert info(trials[3].user_attrs["run"])["status"] == "finished"


def test_a_database_url_holds_the_study_and_search_options_reach_no_trial(tmp_path):
    url = f"sqlite:///{tmp_path}/studies.db"
    given = ["experiment=demo", f"paths.log_dir={tmp_path}", "search.study=s", "seed=3"]
    cfg, trial_args, created, storage = setup([*given, f"search.storage={url}"])
    assert storage == url and trial_args == [
        "experiment=demo",
        f"paths.log_dir={tmp_path}",
        "seed=3",
    ]
    assert cfg.search.n_trials == 20 and not (tmp_path / "demo").exists()  # no journal file
    loaded = optuna.load_study(study_name="s", storage=url)
    assert created.study_name == loaded.study_name == "s"
    assert loaded.direction == optuna.study.StudyDirection.MAXIMIZE  # val/dice: max


def test_the_report_of_a_study_that_does_not_exist_is_one_paragraph(tmp_path, capsys):
    given = ["experiment=demo", f"paths.log_dir={tmp_path}", "search.study=nope"]
    for storage in ([], [f"search.storage=sqlite:///{tmp_path}/studies.db"]):
        with pytest.raises(SystemExit) as stopped:
            run_app(tune_main, "report", *given, *storage)
        assert stopped.value.code == 1
        assert "There is no study 'nope' in " in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()  # nothing created for it

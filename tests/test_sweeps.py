"""Sweeps (-m): failed and stopped jobs, the SLURM launcher; the W&B sweep file names real keys.
(The Optuna search, make tune: tests/test_tune.py.)"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from lightseg import CONFIG_DIR
from lightseg.config import compose_config
from lightseg.errors import LightsegError
from lightseg.tools.table import main as table_main
from lightseg.tools.table import write_tables
from lightseg.train import check_sweep
from tests.runs import run_app, run_cli, tiny_cli_run
from tests.test_command_line import cli

SWEEP_FILE = Path(CONFIG_DIR).parent / "sweeps" / "wandb_demo.yaml"


def test_wandb_sweep_parameters_are_config_keys_passed_as_hydra_overrides(tmp_path):
    sweep = yaml.safe_load(SWEEP_FILE.read_text())
    assert sweep["metric"] == {"name": "val/dice", "goal": "maximize"}
    assert sweep["command"][-1] == "${args_no_hyphens}" and "lightseg.train" in sweep["command"]
    # what the agent runs for the first value of every parameter: a valid command line
    first = {
        k: v["values"][0] if "values" in v else v["min"] for k, v in sweep["parameters"].items()
    }
    args = ["experiment=demo", f"paths.log_dir={tmp_path}"]
    args += [f"{key}={value}" for key, value in first.items()]
    cfg = compose_config(args, hydra=True)
    choices = cfg.hydra.runtime.choices  # a config group (loss=...) is an option, not a value
    chosen = {k: choices[k] if k in choices else OmegaConf.select(cfg, k) for k in first}
    assert {k: str(v) for k, v in chosen.items()} == {k: str(v) for k, v in first.items()}


def test_the_slurm_launcher_config_submits_one_job_per_run(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="optional extra: slurm")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.signal_delay_s == 120 and launcher.additional_parameters.requeue is True
    # a sweep may carry resume=auto (each requeued job continues its own folder) ...
    check_sweep(compose_train("resume=auto"))
    # ... but not one checkpoint for every job
    with pytest.raises(LightsegError, match="start every job from that one checkpoint"):
        check_sweep(compose_train(f"ckpt_path={tmp_path}/x.ckpt"))


def compose_train(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("train", overrides=["paths.output_dir=run", *overrides])


def test_a_failed_job_is_recorded_and_the_sweep_runs_the_next(
    one_thread, monkeypatch, tmp_path, data_dir, capsys
):
    # job 0: optimizer.lr=1e30 takes the weights past float32 in one step, so the loss of its
    # second batch is NaN (StopOnNonFiniteLoss); job 1 trains as usual
    args = [*tiny_cli_run(tmp_path, data_dir), "trainer.limit_train_batches=2"]
    with pytest.raises(SystemExit) as stop:
        run_cli(monkeypatch, "-m", *args, "optimizer.lr=1e30,2e-3")
    assert stop.value.code == 1
    (sweep,) = (tmp_path / "logs" / "demo" / "multiruns").iterdir()
    reason = "Training stopped: the loss became NaN at global step 1 (epoch 0, batch 1)"
    info = json.loads((sweep / "0" / "run_info.json").read_text())
    assert info["status"] == "failed" and reason in info["message"]
    assert not (sweep / "0" / "metrics.json").exists()
    assert json.loads((sweep / "1" / "run_info.json").read_text())["status"] == "finished"
    dice = json.loads((sweep / "1" / "metrics.json").read_text())["test/dice"]
    err = capsys.readouterr().err
    assert f"lightseg: error: {reason}" in err  # as the job ended ...
    assert err.count(reason) == 2  # ... and in the summary
    summary = err.split("lightseg: error: ")[-1]
    assert summary.startswith(
        f"1 of 2 sweep jobs failed (the others ran to their end): job 0 ({sweep / '0'}, "
        f"optimizer.lr=1e+30): {reason}. No checkpoint had been saved yet"
    )
    assert f"python -m lightseg.tools.table runs={sweep} " in summary

    run_app(table_main, f"runs={sweep}", "columns=[test/dice]", "resamples=100")
    table = (sweep / "results.md").read_text()
    assert f"| lr=0.002 | {dice:.3f} | **" in table  # the best (only) row: per image in bold
    assert "| lr=1e+30 | - | - | - | 0/1 |" in table
    assert "- Missing or failed runs (1 of 2):" in table
    assert f"  - 0 (lr=1e+30, seed=42): failed: {reason}." in table

    # the same sweep with resume=auto continues each job in its own folder: job 1 from its
    # last.ckpt (it had finished: the same numbers again), job 0 from the start (none saved)
    with pytest.raises(SystemExit):
        run_cli(
            monkeypatch,
            "-m",
            *args,
            "optimizer.lr=1e30,2e-3",
            "resume=auto",
            f"hydra.sweep.dir={sweep}",
        )
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    info = json.loads((sweep / "1" / "run_info.json").read_text())
    assert info["status"] == "finished"
    assert [r["checkpoint"] for r in info["resumes"]] == [
        str(sweep / "1" / "checkpoints" / "last.ckpt")
    ]
    assert json.loads((sweep / "1" / "metrics.json").read_text())["test/dice"] == dice
    assert json.loads((sweep / "0" / "run_info.json").read_text())["status"] == "failed"


def test_jobs_that_fail_before_training_leave_a_failed_record(monkeypatch, tmp_path, data_dir):
    with pytest.raises(SystemExit) as stop:
        run_cli(monkeypatch, "-m", *tiny_cli_run(tmp_path, data_dir), "data.image_size=0,-1")
    assert stop.value.code == 1
    (sweep,) = (tmp_path / "logs" / "demo" / "multiruns").iterdir()
    for job, size in (("0", 0), ("1", -1)):
        info = json.loads((sweep / job / "run_info.json").read_text())
        assert info["status"] == "failed"
        assert info["message"].startswith(f"data.image_size={size} is not an image size")
        assert (sweep / job / ".hydra" / "overrides.yaml").is_file()  # what the table reads
    md, _ = write_tables(sweep, ["test/dice"])
    assert "- Missing or failed runs (2 of 2):" in md.read_text()
    assert "  - 1 (image_size=-1, seed=42): failed: data.image_size=-1 is not" in md.read_text()


def test_a_checkpoint_for_every_job_is_refused_before_the_first(
    monkeypatch, tmp_path, data_dir, capsys
):
    with pytest.raises(SystemExit) as stop:
        run_cli(monkeypatch, "-m", *tiny_cli_run(tmp_path, data_dir), "ckpt_path=last", "seed=1,2")
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.count("lightseg: error:") == 1  # one paragraph, no summary of jobs
    assert "lightseg: error: ckpt_path=last in a sweep would start every job from that one" in err
    (sweep,) = (tmp_path / "logs" / "demo" / "multiruns").iterdir()
    assert [p.name for p in sweep.iterdir()] == ["multirun.yaml"]  # no job folder left behind


def test_a_stop_signal_stops_the_whole_sweep(one_thread, monkeypatch, tmp_path, data_dir, capsys):
    kill = [
        "+callbacks.kill._target_=tests.runs.SignalAt",
        "+callbacks.kill.epoch=0",
        "+callbacks.kill.batch_idx=0",
    ]
    with pytest.raises(SystemExit) as stop:
        run_cli(monkeypatch, "-m", *tiny_cli_run(tmp_path, data_dir), *kill, "seed=1,2")
    assert stop.value.code == 128 + signal.SIGTERM
    (sweep,) = (tmp_path / "logs" / "demo" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0"]  # job 1 never began
    assert json.loads((sweep / "0" / "run_info.json").read_text())["status"] == "interrupted"
    err = capsys.readouterr().err
    assert err.count("lightseg: error:") == 1 and "sweep jobs failed" not in err


@pytest.mark.slow  # about 45 s: three processes start
def test_a_sweep_on_submitit_runs_every_job_and_ends_with_a_summary(tmp_path, data_dir):
    # the shipped SLURM launcher's local twin: `python -m lightseg.train` pickled for the
    # workers (each job in a process of its own), the failed job's error brought back
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="optional extra: slurm")
    args = [*tiny_cli_run(tmp_path, data_dir), "trainer.limit_train_batches=2"]
    done = cli(tmp_path, "-m", *args, "hydra/launcher=submitit_local", "optimizer.lr=1e30,2e-3")
    assert done.returncode == 1, done.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "demo" / "multiruns").iterdir()
    # the summary, read from the jobs' folders: the jobs ran in the launcher's processes
    assert done.stderr.count("lightseg: error:") == 1
    assert (
        f"lightseg: error: 1 of 2 sweep jobs failed (the others ran to their end): job 0 "
        f"({sweep / '0'}, optimizer.lr=1e+30): Training stopped: the loss became NaN"
    ) in done.stderr
    assert json.loads((sweep / "0" / "run_info.json").read_text())["status"] == "failed"
    assert json.loads((sweep / "1" / "run_info.json").read_text())["status"] == "finished"
    assert (sweep / "1" / "metrics.json").is_file()

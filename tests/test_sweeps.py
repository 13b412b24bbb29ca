"""Sweeps: the Optuna search config (optional extra) and the W&B sweep file name real keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from lightseg import CONFIG_DIR
from lightseg.config import compose_config
from lightseg.errors import LightsegError
from lightseg.train import check_sweep
from tests.runs import run_cli, tiny_cli_run

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


@pytest.fixture
def optuna_installed():
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="optional extra: optuna")


def test_optuna_search_space_names_existing_keys_and_options(optuna_installed):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["hparams_search=demo_optuna"], return_hydra_config=True)
    assert cfg.hydra.mode.name == "MULTIRUN" and cfg.hydra.sweeper.direction == "maximize"
    assert cfg.monitor_mode == "max"
    parser = OverridesParser.create()
    for key, space in cfg.hydra.sweeper.params.items():
        (override,) = parser.parse_overrides([f"{key}={space}"])
        group = Path(CONFIG_DIR) / key
        if group.is_dir():  # a config group: every option is a file
            options = list(override.sweep_string_iterator())
            assert all((group / f"{option}.yaml").is_file() for option in options), key
        else:
            assert OmegaConf.select(cfg, key) is not None, key


def test_tiny_optuna_search_returns_the_best_trial(
    optuna_installed, one_thread, monkeypatch, tmp_path, data_dir
):
    run_cli(
        monkeypatch,
        *tiny_cli_run(tmp_path, data_dir),
        "hparams_search=demo_optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=1",
    )
    (sweep,) = (tmp_path / "logs" / "demo" / "multiruns").iterdir()
    trials = [json.loads((sweep / n / "metrics.json").read_text())["val/dice"] for n in ("0", "1")]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(max(trials))
    assert set(result["best_params"]) == {
        "optimizer.lr",
        "optimizer.weight_decay",
        "model.arch",
        "loss",
    }


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

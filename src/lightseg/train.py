"""Train, validate and test one configuration: ``python -m lightseg.train experiment=ph2_unet``
(``make train EXP=...``). Hydra chooses the run folder (lightseg.runs.resume); ``train(cfg)``
locks it, builds the experiment, fits, and evaluates the best checkpoint on val and test."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from omegaconf import DictConfig, OmegaConf

from lightseg.callbacks.faults import launcher_stops
from lightseg.callbacks.run_files import RUN_FILES
from lightseg.checkpoints import check_resumable, checkpoint_position, remove_partial_files
from lightseg.config import app
from lightseg.errors import LightsegError, SweepRefused, user_message
from lightseg.experiment import build, group_choices
from lightseg.metrics import finite_or_none
from lightseg.recipe import PLAN_FILE, with_plan
from lightseg.runs import RunFolder, RunLock, recorded_run, resume
from lightseg.runs.folder import RUN_INFO
from lightseg.runs.protocol import training_card
from lightseg.runs.record import end_record
from lightseg.utils.console import console, print_config, print_metrics
from lightseg.utils.loggers import wandb_finished


@app("train")
def main(cfg: DictConfig) -> float | None:
    cfg, overrides = as_composed(cfg)
    name = HydraConfig.get().job.config_name  # recipe=auto: the plan's overrides under these
    cfg = with_plan(cfg, overrides, lambda planned: hydra.compose(name, planned))
    return train(cfg, overrides).get(cfg.monitor)  # what Hydra sweepers optimise


def as_composed(cfg: DictConfig) -> tuple[DictConfig, list[str]]:
    """The config a run is trained with, and its overrides: a run continued by a command with
    other overrides (``ckpt_path=last`` alone) is composed again as it was started plus them."""
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    if hydra_cfg.mode == RunMode.MULTIRUN:
        check_sweep(cfg)
        return cfg, overrides
    run = RunFolder(cfg.paths.output_dir)
    checkpoint = resume.checkpoint_for(cfg.get("ckpt_path"), cfg.get("resume"), run)
    changed = resume.continuation(run, overrides) if checkpoint else None
    if changed is None:
        return cfg, overrides
    overrides = [*changed, f"ckpt_path={resume.quoted(checkpoint)}"]
    return hydra.compose(hydra_cfg.job.config_name, overrides), overrides


def train(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, float | None]:
    """Fit, then validate and test the best checkpoint; returns and saves the final metrics
    and their ``protocol`` card (``overrides``: the command line's, recorded in run_info.json)."""
    run = RunFolder(cfg.paths.output_dir)
    owner = resume.is_first_process()  # the first process of a job owns the folder
    try:
        checkpoint = resume.checkpoint_for(cfg.get("ckpt_path"), cfg.get("resume"), run)
        if checkpoint:
            try:
                check_resumable(checkpoint)
            except LightsegError as error:
                if Path(checkpoint) == run.last and run.is_run:  # this run cannot continue
                    end_record(run.path, "failed", str(error))
                raise
        print_config(cfg, group_choices())  # a few lines; print_config=full: the whole tree
        with RunLock(run.path) if owner else nullcontext():
            return _train(cfg, run, checkpoint, overrides or [])
    except Exception as error:
        sweep_job = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        message = user_message(error)
        if not run.is_run and owner and sweep_job:  # a table lists the failed job
            end_record(run.path, "failed", message or f"{type(error).__name__}: {error}")
        elif message is not None and not run.is_run:
            run.discard_if_unused()  # a mistake caught before the run began: no empty folder
        raise


def _train(
    cfg: DictConfig, run: RunFolder, checkpoint: str | None, overrides: list[str]
) -> dict[str, float | None]:
    experiment = build(cfg)
    trainer, module, datamodule = experiment.trainer, experiment.module, experiment.datamodule
    if trainer.is_global_zero:
        run.path.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(experiment.cfg, run.config, resolve=True)
        if (cfg.get("recipe") or {}).get("lines"):  # recipe=auto: the plan it trained with
            OmegaConf.save(cfg.recipe, run.path / PLAN_FILE)
        if checkpoint:
            remove_partial_files(Path(checkpoint).parent)
    # a ddp_spawn rank's W&B run cannot keep files (callbacks.run_files): this process uploads
    spawned = isinstance(trainer.strategy.launcher, _MultiProcessingLauncher)
    with (  # the run's status is written (recorded_run) before W&B's copy of it (wandb_finished)
        wandb_finished(run.path, RUN_FILES if spawned else [RUN_INFO]),
        recorded_run(run.path, checkpoint, overrides) if trainer.is_global_zero else nullcontext(),
        launcher_stops(trainer),  # ddp_spawn: a stop signal ends the ranks, then this process
    ):  # the loggers get the config from callbacks.run_files, in the training process
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint)
        metrics = evaluate_best(trainer, module, datamodule)
        metrics["protocol"] = training_card(experiment, trainer)  # how the numbers were made
        if trainer.is_global_zero:
            run.metrics.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    if trainer.is_global_zero:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        at = metrics.get("best/epoch")
        where = "" if at is None else f" (epoch {at}, step {metrics.get('best/step')})"
        print_metrics(metrics, title=f"{cfg.name}: best checkpoint{where} on val and test")
        console.print(f"Run folder: {run}", soft_wrap=True)
        console.print(f"Best checkpoint: {best or 'none'}", soft_wrap=True)
    return metrics


def evaluate_best(trainer: L.Trainer, module, datamodule) -> dict[str, float | None]:
    """Validation and test metrics of the best checkpoint (the final weights without one; NaN
    as None), with the epoch and step it was saved at (``best/epoch``, ``best/step``)."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    metrics = {f"best/{k}": v for k, v in checkpoint_position(best).items()} if best else {}
    for evaluate in (trainer.validate, trainer.test):
        results = evaluate(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: finite_or_none(float(v)) for k, v in results[0].items()})
    return metrics


def check_sweep(cfg: DictConfig) -> None:
    """Refuse at its first job (whose folder is not kept) a sweep (-m) that would start every job
    from one checkpoint, or run Lightning's ``ddp``, which re-runs the command line per device."""
    checkpoint = cfg.get("ckpt_path")
    strategy = str(cfg.trainer.get("strategy") or "")
    several = cfg.trainer.get("devices") not in (1, "1")
    if checkpoint is not None:
        refusal = (
            f"ckpt_path={checkpoint} in a sweep would start every job from that one checkpoint. "
            "Continue one sweep job on its own (python -m lightseg.train ckpt_path=<job "
            "folder>), or give the sweep resume=auto with the sweep's folder "
            "(hydra.sweep.dir=<it>): each job then continues its own folder."
        )
    elif strategy.startswith("ddp") and "spawn" not in strategy and several:
        refusal = (
            "A sweep (-m) with trainer.strategy=ddp on several devices is not possible: Lightning "
            "starts each device's process by re-running the command line, sweep included. Run "
            "each sweep job as its own job: hydra/launcher=slurm (Hydra's submitit launcher, "
            "configs/hydra/launcher/slurm.yaml), or trainer.strategy=ddp_spawn."
        )
    else:
        return
    RunFolder(cfg.paths.output_dir).discard_if_unused()
    raise SweepRefused(refusal)


if __name__ == "__main__":
    main()

"""Train, validate and test one configuration.

    python -m lightseg.train experiment=ph2_unet model.arch=FPN      (or: make train EXP=...)
    python -m lightseg.train experiment=ph2_unet ckpt_path=last      (continue the newest
                                                                      unfinished run)

``train(cfg)`` is the plain function behind the Hydra entry point; tests call it directly.
It checks the cheap things first (config keys and types, the data on disk, whether the
network takes the image size), then builds what is slow (pretrained weights) and trains.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from lightseg import CONFIG_DIR
from lightseg.config import image_size_hw, plain, validate
from lightseg.data.statistics import resolve_auto
from lightseg.errors import LightsegError, user_errors, user_message
from lightseg.launch import prepare_arguments
from lightseg.metrics import finite_or_none
from lightseg.models import SegmentationModule, check_network
from lightseg.runs import RunFolder, RunLock, recorded_run
from lightseg.runs.record import end_record
from lightseg.runs.resume import checkpoint_to_resume, continued_config
from lightseg.utils.checkpoint import (
    AtomicCheckpointIO,
    check_resumable,
    checkpoint_position,
    remove_partial_files,
)
from lightseg.utils.console import console, print_config, print_metrics, quiet_third_party
from lightseg.utils.devices import check_trainer
from lightseg.utils.loggers import wandb_finished

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig, classes: tuple[str, ...]) -> SegmentationModule:
    if not cfg.get("metrics"):
        raise LightsegError(
            "The config has no metrics: choose the set the task reports, metrics=binary or "
            "metrics=multiclass (data configs choose one for their dataset)."
        )
    return SegmentationModule(
        model=plain(cfg.model),
        loss=plain(cfg.loss),
        metrics=plain(cfg.metrics),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")) or None,
        classes=list(classes),
        normalization={"mean": list(cfg.data.mean), "std": list(cfg.data.std)},
        inference=inference_defaults(cfg.data),
        compile=bool(cfg.get("compile", False)),
        channels_last=bool(cfg.get("channels_last", False)),
    )


def inference_defaults(data: DictConfig) -> dict[str, Any]:
    """How eval/predict should feed images to this model, stored in its checkpoints.

    Pipelines that resize for evaluation (PH2, MADS, demo) get ``whole``-image inference at the
    training size; those that keep native resolution and pad (VOC, COCO) get ``slide``.
    """
    eval_transforms = plain(data.get("transforms", {})).get("eval") or []
    resizes = any(
        str(t.get("_target_", "")).rsplit(".", 1)[-1] == "Resize" for t in eval_transforms
    )
    size = list(image_size_hw(data.image_size))
    return {"image_size": size, "mode": "whole" if resizes else "slide"}


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate each named entry of a callbacks/logger group (``null`` entries skipped)."""
    return [instantiate(node) for node in (group or {}).values() if node and "_target_" in node]


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    overrides.setdefault("plugins", [AtomicCheckpointIO()])  # never a half-written checkpoint
    quiet_third_party()  # Lightning's tips and notes on lightseg's own choices
    trainer = check_trainer(plain(cfg.trainer))
    return instantiate(trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def group_choices() -> dict[str, str]:
    """The config group options Hydra composed (for messages); empty outside Hydra."""
    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def train(cfg: DictConfig, overrides: list[str] | None = None) -> dict[str, float | None]:
    """Fit, then validate and test the best checkpoint; returns and saves the final metrics.

    ``overrides``: what the command line changed in this invocation (kept in run_info.json).
    """
    validate(cfg, group_choices())
    run = RunFolder(cfg.paths.output_dir)
    ckpt_path = checkpoint_to_resume(cfg, run)
    if ckpt_path:
        try:
            check_resumable(ckpt_path)
        except LightsegError as error:
            if Path(ckpt_path) == run.last and run.is_run:  # this run cannot continue
                end_record(run.path, "failed", str(error))
            raise
    owner = rank_zero_only.rank == 0  # the first process of a job owns the folder
    lock = RunLock(run.path) if owner else None
    if lock:
        lock.acquire()
    try:
        return _train(cfg, run, ckpt_path, owner, overrides)
    finally:
        if lock:
            lock.release()


def _train(cfg, run: RunFolder, ckpt_path, owner: bool, overrides) -> dict[str, float | None]:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.locate()  # the data is there before anything slow happens
    cfg = resolve_auto(cfg, datamodule)  # `auto` mean/std and class weights -> numbers
    out_channels = datamodule.task.out_channels
    check_network(plain(cfg.model), out_channels, datamodule.in_channels, datamodule.image_size)
    module = build_module(cfg, datamodule.classes)
    trainer = build_trainer(cfg)

    if trainer.is_global_zero:
        run.path.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, run.config, resolve=True)
        if ckpt_path:
            remove_partial_files(Path(ckpt_path).parent)
    with (
        recorded_run(run.path, ckpt_path, enabled=trainer.is_global_zero, overrides=overrides),
        wandb_finished(),
    ):
        for logger in trainer.loggers:
            logger.log_hyperparams(plain(cfg))
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = {
            k: finite_or_none(v) for k, v in evaluate_best(trainer, module, datamodule).items()
        }
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


def evaluate_best(trainer: L.Trainer, module, datamodule) -> dict[str, float]:
    """Validation and test metrics of the best checkpoint (the final weights without one),
    with the epoch and step it was saved at (``best/epoch``, ``best/step``)."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    metrics: dict[str, float] = {}
    if best:
        metrics.update({f"best/{k}": v for k, v in checkpoint_position(best).items()})
    for evaluate in (trainer.validate, trainer.test):
        results = evaluate(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: float(v) for k, v in results[0].items()})
    return metrics


def this_invocation() -> tuple[list[str], bool]:
    """(the overrides this command line gave, whether Hydra runs a sweep)."""
    hydra_cfg = HydraConfig.get()
    overrides = [o for o in hydra_cfg.overrides.task if not o.startswith("hydra.")]
    return overrides, hydra_cfg.mode == RunMode.MULTIRUN


def refuse_ddp_sweep(cfg: DictConfig) -> None:
    """Lightning's ``ddp`` re-runs the command line per device: a sweep would run N times."""
    strategy = str(cfg.trainer.get("strategy") or "")
    devices = cfg.trainer.get("devices")
    if strategy.startswith("ddp") and "spawn" not in strategy and devices not in (1, "1"):
        raise LightsegError(
            "A sweep (-m) with trainer.strategy=ddp on several devices is not possible: Lightning "
            "starts each device's process by re-running the command line, sweep included. Run "
            "each sweep job as its own job: hydra/launcher=submitit_slurm (configs/hydra/"
            "launcher/slurm.yaml), or trainer.strategy=ddp_spawn."
        )


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    with user_errors():
        overrides, sweep = this_invocation()
        if sweep:
            refuse_ddp_sweep(cfg)
        run = RunFolder(cfg.paths.output_dir)
        resuming = cfg.get("ckpt_path") is not None or cfg.get("resume") == "auto"
        if resuming and run.last.is_file():  # (a bad resume value is train()'s error)
            cfg = continued_config(cfg, run, overrides)
        print_config(cfg, group_choices())  # a few lines; print_config=full: the whole tree
        try:
            metrics = train(cfg, overrides)
        except Exception as error:
            if user_message(error) is not None and not run.is_run:
                run.discard_if_unused()  # a mistake caught before the run began: no empty folder
            raise
        value = metrics.get(cfg.monitor)
        return value  # what Hydra sweepers (e.g. Optuna) optimise


def main() -> None:
    """Command line: check the overrides and choose the run folder, then start Hydra."""
    with user_errors():
        sys.argv[1:] = prepare_arguments(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()

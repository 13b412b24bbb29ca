"""Train, validate and test one configuration.

    python -m lightseg.train experiment=ph2_unet model.arch=FPN      (or: make train EXP=...)
    python -m lightseg.train experiment=ph2_unet ckpt_path=last      (continue the newest
                                                                      unfinished run)

``train(cfg)`` is the plain function behind the Hydra entry point; tests call it directly.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from lightseg import CONFIG_DIR
from lightseg.errors import LightsegError, user_errors
from lightseg.launch import existing_checkpoint, prepare_arguments
from lightseg.models import SegmentationModule
from lightseg.utils.checkpoint import AtomicCheckpointIO, remove_partial_files
from lightseg.utils.config import plain
from lightseg.utils.console import console, print_config_tree, print_metrics
from lightseg.utils.devices import check_trainer
from lightseg.utils.loggers import wandb_finished
from lightseg.utils.run_info import recorded_run

log = logging.getLogger(__name__)


def build_module(cfg: DictConfig, classes: tuple[str, ...]) -> SegmentationModule:
    return SegmentationModule(
        model=plain(cfg.model),
        loss=plain(cfg.loss),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")) or None,
        classes=list(classes),
        normalization={"mean": list(cfg.data.mean), "std": list(cfg.data.std)},
        inference=inference_defaults(cfg.data),
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
    size = [int(side) for side in data.image_size]
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
    trainer = check_trainer(plain(cfg.trainer))
    return instantiate(trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def checkpoint_to_resume(cfg: DictConfig) -> str | None:
    """``cfg.ckpt_path`` checked; ``last`` means this run folder's last.ckpt.

    The command line (``main``) has already turned ``ckpt_path=last`` into a run folder;
    this covers ``train(cfg)`` called directly.
    """
    ckpt = cfg.get("ckpt_path")
    if ckpt is None:
        return None
    if str(ckpt) == "last":
        ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not ckpt.is_file():
            raise LightsegError(f"ckpt_path=last: there is no '{ckpt}' to continue from.")
    return str(existing_checkpoint(str(ckpt)))


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then validate and test the best checkpoint; returns and saves the final metrics."""
    ckpt_path = checkpoint_to_resume(cfg)
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, datamodule.classes)
    trainer = build_trainer(cfg)

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
        if ckpt_path:
            remove_partial_files(Path(ckpt_path).parent)
    with recorded_run(output_dir, ckpt_path, enabled=trainer.is_global_zero), wandb_finished():
        for logger in trainer.loggers:
            logger.log_hyperparams(plain(cfg))
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        metrics = evaluate_best(trainer, module, datamodule)
        if trainer.is_global_zero:
            (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    if trainer.is_global_zero:
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        print_metrics(metrics, title=f"{cfg.name}: best checkpoint on val and test")
        console.print(f"Run folder: [bold]{output_dir}[/]  (best checkpoint: {best or 'none'})")
    return metrics


def evaluate_best(trainer: L.Trainer, module, datamodule) -> dict[str, float]:
    """Validation and test metrics of the best checkpoint (the final weights without one)."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    metrics: dict[str, float] = {}
    for evaluate in (trainer.validate, trainer.test):
        results = evaluate(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: float(v) for k, v in results[0].items()})
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    with user_errors():
        if cfg.get("print_config"):
            print_config_tree(cfg)
        metrics = train(cfg)
        return metrics.get(cfg.monitor)  # what Hydra sweepers (e.g. Optuna) optimise


def main() -> None:
    """Command line: check the overrides and resolve resume requests, then start Hydra."""
    with user_errors():
        sys.argv[1:] = prepare_arguments(sys.argv[1:])
    hydra_main()


if __name__ == "__main__":
    main()

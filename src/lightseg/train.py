"""Train, validate and test one configuration.

    python -m lightseg.train experiment=ph2_unet model.arch=FPN      (or: make train EXP=...)

``train(cfg)`` is the plain function behind the Hydra entry point; tests call it directly.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, OmegaConf

from lightseg import CONFIG_DIR
from lightseg.errors import user_errors
from lightseg.models import SegmentationModule
from lightseg.utils.console import console, print_config_tree, print_metrics
from lightseg.utils.devices import check_trainer

log = logging.getLogger(__name__)


def plain(node: Any) -> Any:
    """A resolved config node as plain Python containers (what checkpoints store)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def build_module(cfg: DictConfig, classes: tuple[str, ...]) -> SegmentationModule:
    return SegmentationModule(
        model=plain(cfg.model),
        loss=plain(cfg.loss),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")) or None,
        classes=list(classes),
        normalization={"mean": list(cfg.data.mean), "std": list(cfg.data.std)},
    )


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate each named entry of a callbacks/logger group (``null`` entries skipped)."""
    return [instantiate(node) for node in (group or {}).values() if node and "_target_" in node]


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer = check_trainer(plain(cfg.trainer))
    return instantiate(trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit, then validate and test the best checkpoint; returns and saves the final metrics."""
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, datamodule.classes)
    trainer = build_trainer(cfg)

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(cfg, output_dir / "config.yaml", resolve=True)
    for logger in trainer.loggers:
        logger.log_hyperparams(plain(cfg))

    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    metrics: dict[str, float] = {}
    for evaluate in (trainer.validate, trainer.test):
        results = evaluate(module, datamodule=datamodule, ckpt_path=best or None, verbose=False)
        metrics.update({k: float(v) for k, v in results[0].items()})

    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
        print_metrics(metrics, title=f"{cfg.name}: best checkpoint on val and test")
        console.print(f"Run folder: [bold]{output_dir}[/]  (best checkpoint: {best or 'none'})")
    return metrics


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    with user_errors():
        if cfg.get("print_config"):
            print_config_tree(cfg)
        metrics = train(cfg)
        return metrics.get(cfg.monitor)  # what Hydra sweepers (e.g. Optuna) optimise


if __name__ == "__main__":
    main()

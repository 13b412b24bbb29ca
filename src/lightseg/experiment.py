"""One experiment from one composed config: the data, the resolved config, the module, the
trainer; ``train``, ``make lr-find`` and the benchmarks all build it here, so they cannot drift.
:func:`build` checks the cheap things (config keys and types, the data on disk, the network at
the image size) before it builds the slow ones.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor
from omegaconf import DictConfig, open_dict

from lightseg.checkpoints import AtomicCheckpointIO
from lightseg.config import image_size_hw, plain, validate
from lightseg.data import SegmentationDataModule
from lightseg.data.statistics import resolve_auto
from lightseg.losses import loss_terms
from lightseg.metrics import metrics_for
from lightseg.models import check_network
from lightseg.models.network import takes
from lightseg.models.smp_models import with_saved_architecture
from lightseg.utils.console import quiet_third_party
from lightseg.utils.devices import check_trainer


@dataclass
class Experiment:
    cfg: DictConfig  # resolved: what the run saves and its checkpoints store
    datamodule: SegmentationDataModule
    module: L.LightningModule
    trainer: L.Trainer


def build(cfg: DictConfig, **trainer_options: Any) -> Experiment:
    """The experiment ``cfg`` describes; ``trainer_options`` override the trainer config's."""
    validate(cfg, group_choices())
    loss_terms(plain(cfg.loss))  # the loss config's shape, before any data is read
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.locate()  # the data is there (prepared, found, split) before anything slow
    resolved = resolve(cfg, datamodule)
    task = datamodule.task
    check_network(
        plain(resolved.model), task.out_channels, datamodule.in_channels, datamodule.image_size
    )
    module = build_module(resolved, datamodule)
    return Experiment(resolved, datamodule, module, build_trainer(resolved, **trainer_options))


def resolve(cfg: DictConfig, datamodule: SegmentationDataModule) -> DictConfig:
    """A copy of ``cfg`` (what a run and its checkpoints save) with what the data decides: ``auto``
    mean/std and loss weights, the task's metric set when none was chosen (``+metrics.<name>``
    adds to it), ``in_channels``, the saved architecture of an smp ``from_pretrained``."""
    resolved = resolve_auto(cfg, datamodule)
    with open_dict(resolved):
        if resolved.model.get("from_pretrained"):  # the saved architecture, for checkpoints
            resolved.model = with_saved_architecture(plain(resolved.model))
        if "metrics" not in group_choices():  # the task's set, any +metrics.<name> on top
            resolved.metrics = {**metrics_for(datamodule.task), **plain(cfg.get("metrics") or {})}
        if "in_channels" not in resolved.model and takes(resolved.model._target_, "in_channels"):
            resolved.model.in_channels = datamodule.in_channels
    return resolved


def build_module(cfg: DictConfig, datamodule: SegmentationDataModule) -> L.LightningModule:
    """The ``module`` config's LightningModule, with the other groups as plain values."""
    return instantiate(
        cfg.get("module") or {"_target_": "lightseg.models.SegmentationModule"},
        model=plain(cfg.model),
        loss=plain(cfg.loss),
        metrics=plain(cfg.metrics),
        optimizer=plain(cfg.optimizer),
        scheduler=plain(cfg.get("scheduler")) or None,
        classes=list(datamodule.classes),
        normalization={
            "mean": list(cfg.data.mean),
            "std": list(cfg.data.std),
            **({"clip": float(cfg.data.clip)} if cfg.data.get("clip") else {}),
        },
        inference=inference_defaults(cfg.data),
        _recursive_=False,
        _convert_="all",
    )


def inference_defaults(data: DictConfig) -> dict[str, Any]:
    """How eval/predict feed images to this model (stored in its checkpoints): ``whole`` images
    at the training size where evaluation resizes, else ``slide``."""
    eval_transforms = plain(data.get("transforms", {})).get("eval") or []
    resizes = any(str(t.get("_target_", "")).split(".")[-1] == "Resize" for t in eval_transforms)
    size = list(image_size_hw(data.image_size))
    return {"image_size": size, "mode": "whole" if resizes else "slide"}


def build_trainer(cfg: DictConfig, **options: Any) -> L.Trainer:
    """Lightning's Trainer from the trainer, logger and callbacks groups (null entries left out)."""
    loggers, callbacks = (
        [instantiate(n) for n in (cfg.get(group) or {}).values() if n and "_target_" in n]
        for group in ("logger", "callbacks")
    )
    if not loggers:  # LearningRateMonitor refuses to run without a logger
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    options.setdefault("plugins", [AtomicCheckpointIO()])  # never a half-written checkpoint
    quiet_third_party()  # Lightning's tips and notes on lightseg's own choices
    trainer = check_trainer(plain(cfg.trainer))
    return instantiate(trainer, callbacks=callbacks, logger=loggers or False, **options)


def group_choices() -> dict[str, str]:
    """The config group options Hydra composed (for messages); empty outside Hydra."""
    if not HydraConfig.initialized():
        return {}
    return {k: str(v) for k, v in HydraConfig.get().runtime.choices.items() if v is not None}


def with_changes(cfg: DictConfig, **values: Any) -> DictConfig:
    """A copy of ``cfg`` with top-level ``values`` set (lr-find drops the scheduler)."""
    changed = copy.deepcopy(cfg)
    with open_dict(changed):
        changed.update(values)
    return changed

"""SegmentationModule: network, loss, metrics and logging for any task and architecture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MeanMetric

from lightseg.losses import build_loss
from lightseg.metrics import SegmentationMetrics
from lightseg.models.factory import build_model
from lightseg.models.torchvision_models import AUX_WEIGHT
from lightseg.task import Task
from lightseg.utils.devices import compile_in_place

#: Scheduler arguments that mean "the length of training"; ``null`` in config = fill it in.
SCHEDULE_LENGTH_ARGS = ("total_iters", "T_max", "total_steps")
EVAL_STAGES = ("val", "test")


class SegmentationModule(L.LightningModule):
    """Wraps a network built from ``model`` config; all arguments are plain config dicts.

    Storing only plain dicts as hyperparameters keeps checkpoints self-describing (architecture,
    encoder, classes, normalisation, and in ``inference`` the training input size and how
    evaluation fed images to the network) and loadable with ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        classes: Sequence[str],
        scheduler: Mapping[str, Any] | None = None,
        normalization: Mapping[str, Sequence[float]] | None = None,
        inference: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # train() logs the whole resolved config
        self.task = Task(tuple(classes))
        network = dict(model)
        self.channels_last = bool(network.pop("channels_last", False))
        compile_network = bool(network.pop("compile", False))
        self.net = build_model(out_channels=self.task.out_channels, **network)
        self.aux_weight = float(network.get("aux_weight", AUX_WEIGHT))
        if compile_network:
            compile_in_place(self.net)
        self.criterion = build_loss(loss, self.task)
        self.eval_metrics = nn.ModuleDict({s: SegmentationMetrics(self.task) for s in EVAL_STAGES})
        self.eval_losses = nn.ModuleDict({s: MeanMetric() for s in EVAL_STAGES})

    def setup(self, stage: str) -> None:
        if self.channels_last and self.device.type == "cuda":  # only tensor cores gain from it
            self.net.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [N, out_channels, H, W] for normalised images [N, 3, H, W].

        In training, networks with an auxiliary head return ``(logits, aux_logits)``.
        """
        if self.channels_last and images.is_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        output = self(batch["image"])
        logits, aux = output if isinstance(output, tuple) else (output, None)
        loss, parts = self.criterion(logits, batch["mask"])
        if aux is not None:
            parts = {**parts, "aux": self.criterion(aux, batch["mask"])[0]}
            loss = loss + self.aux_weight * parts["aux"]
        size = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        if len(parts) > 1:
            self.log_dict({f"train/loss_{k}": v for k, v in parts.items()}, batch_size=size)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        logits = self(batch["image"])
        loss, _ = self.criterion(logits, batch["mask"])
        self.eval_losses[stage].update(loss, weight=batch["image"].shape[0])
        self.eval_metrics[stage].update(self.task.predict(logits), batch["mask"])

    def _log_eval_epoch(self, stage: str) -> None:
        values = {f"{stage}/loss": self.eval_losses[stage].compute()}
        values.update({f"{stage}/{k}": v for k, v in self.eval_metrics[stage].compute().items()})
        self.eval_losses[stage].reset()
        self.eval_metrics[stage].reset()
        # torchmetrics already reduced the states over all ranks; the values are global.
        for name, value in values.items():
            self.log(name, value, prog_bar=name in (f"{stage}/dice", f"{stage}/iou"))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_eval_epoch("val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_eval_epoch("test")

    def configure_optimizers(self) -> dict:
        optimizer = instantiate(dict(self.hparams.optimizer), params=self.parameters())
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        config = dict(self.hparams.scheduler)
        interval = config.pop("interval", "epoch")
        length = (
            self.trainer.estimated_stepping_batches
            if interval == "step"
            else self.trainer.max_epochs
        )
        for key in SCHEDULE_LENGTH_ARGS:
            if key in config and config[key] is None:
                config[key] = int(length)
        scheduler = instantiate(config, optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": interval},
        }

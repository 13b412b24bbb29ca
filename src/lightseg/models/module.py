"""SegmentationModule: network, loss, metrics and logging for any task and architecture."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.lr_scheduler import OneCycleLR
from torchmetrics import MeanMetric

from lightseg.config import FINETUNE_KEYS, SCHEDULER_INTERVAL_KEY
from lightseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize
from lightseg.errors import LightsegError
from lightseg.losses import build_loss
from lightseg.metrics import build_metrics, metric_values, update_per_image
from lightseg.models.network import build_network, check_output, encoder_of, logits_of
from lightseg.task import Task
from lightseg.utils.devices import compile_in_place

log = logging.getLogger(__name__)

#: Scheduler arguments that mean "the length of training"; ``null`` in config = fill it in.
SCHEDULE_LENGTH_ARGS = ("total_iters", "T_max", "total_steps")
EVAL_STAGES = ("val", "test")
#: Headline metrics shown in the progress bar, when the metrics config has them.
PROGRESS_BAR_METRICS = ("dice", "iou")


class SegmentationModule(L.LightningModule):
    """Wraps the network ``model`` names; every argument is a plain config dict or value.

    Storing only plain values as hyperparameters keeps checkpoints self-describing (network
    ``_target_`` and keys, loss, metrics, classes, normalisation, and in ``inference`` the
    training input size and how evaluation fed images to the network) and loadable with
    ``torch.load(weights_only=True)``.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        loss: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        classes: Sequence[str],
        metrics: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        normalization: Mapping[str, Sequence[float]] | None = None,
        inference: Mapping[str, Any] | None = None,
        compile: bool = False,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(logger=False)  # train() logs the whole resolved config
        self.task = Task(tuple(classes))
        self.net = build_network(model, self.task.out_channels)
        if compile:
            compile_in_place(self.net)
        self.criterion = build_loss(loss, self.task)
        chosen = build_metrics(metrics, self.task)  # None: the task's set
        self.eval_metrics = nn.ModuleDict(
            {stage: chosen.clone(prefix=f"{stage}/") for stage in EVAL_STAGES}
        )
        self.eval_losses = nn.ModuleDict({stage: MeanMetric() for stage in EVAL_STAGES})
        norm = normalization or {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        self.normalize = Normalize(norm["mean"], norm["std"])

    def setup(self, stage: str) -> None:
        if self.hparams.channels_last and self.device.type == "cuda":  # tensor cores gain
            self.net.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Loaders deliver uint8 images and masks; normalise and widen them here, on the device.

        The only place a training or evaluation batch is normalised (eval, predict and export
        use ``self.normalize`` too); the masks become the long class indices losses take.
        """
        return {**batch, "image": self.normalize(batch["image"]), "mask": batch["mask"].long()}

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The network's output for normalised images [N, C, H, W]: logits, or in training
        ``(logits, aux_logits)`` for networks with an auxiliary head."""
        if self.hparams.channels_last and images.is_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(logits, aux_logits or None)``, checked against the network contract."""
        logits, aux = logits_of(self(images))
        check_output(logits, images, self.task.out_channels)
        return logits, aux

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits, aux = self.logits(batch["image"])
        loss, parts = self.criterion(logits, batch["mask"])
        if aux is not None:
            weight = getattr(self.net, "aux_weight", None)
            if weight is None:
                raise LightsegError(
                    f"{type(self.net).__name__} returned (logits, aux_logits) but has no "
                    "aux_weight attribute: set self.aux_weight (the auxiliary loss weight)."
                )
            parts = {**parts, "aux": self.criterion(aux, batch["mask"])[0]}
            loss = loss + float(weight) * parts["aux"]
        size = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        terms = {f"train/loss_{k}": v for k, v in parts.items()}  # each term's epoch mean
        self.log_dict(terms, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> torch.Tensor:
        """Accumulate the batch's loss; returns its predicted masks (for the metrics)."""
        logits, _ = self.logits(batch["image"])
        loss, _ = self.criterion(logits, batch["mask"])
        self.eval_losses[stage].update(loss, weight=batch["image"].shape[0])
        return self.task.predict(logits)

    def _log_eval_epoch(self, stage: str) -> None:
        values = {f"{stage}/loss": float(self.eval_losses[stage].compute())}
        values.update(metric_values(self.eval_metrics[stage], self.task))
        self.eval_losses[stage].reset()
        self.eval_metrics[stage].reset()
        # torchmetrics already reduced the states over all ranks; the values are global.
        for name, value in values.items():
            self.log(name, value, prog_bar=name.split("/", 1)[1] in PROGRESS_BAR_METRICS)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.eval_metrics["val"].update(self._eval_step(batch, "val"), batch["mask"])

    def on_validation_epoch_end(self) -> None:
        self._log_eval_epoch("val")

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, list]:
        """Also returns each image's metric values, ``{"per_image": [(id, {name: value})]}``:
        the PerImageResults callback writes them to the run's per_image.csv."""
        preds = self._eval_step(batch, "test")
        values = update_per_image(self.eval_metrics["test"], preds, batch["mask"], self.task)
        ids = batch.get("id") or [f"batch{batch_idx}_{i}" for i in range(len(values))]
        return {"per_image": list(zip(ids, values, strict=True))}

    def on_test_epoch_end(self) -> None:
        self._log_eval_epoch("test")

    def configure_optimizers(self) -> dict:
        config = dict(self.hparams.optimizer)
        for key in FINETUNE_KEYS:
            config.pop(key, None)
        # partial: Hydra would turn the parameter groups (dicts) into configs
        optimizer = instantiate(config, _partial_=True)(self.parameter_groups())
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        config = dict(self.hparams.scheduler)
        interval = config.pop(SCHEDULER_INTERVAL_KEY, "epoch")
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

    # --- transfer learning: the encoder's own learning rate, and freezing it at first ------

    def finetuning(self) -> tuple[float, int]:
        """``(decoder_lr_multiplier, freeze_encoder_epochs)`` from the optimizer config."""
        config = {**FINETUNE_KEYS, **(self.hparams.optimizer or {})}
        multiplier, epochs = config["decoder_lr_multiplier"], config["freeze_encoder_epochs"]
        if (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, int | float)
            or multiplier <= 0
        ):
            raise LightsegError(
                f"optimizer.decoder_lr_multiplier={multiplier!r} must be a number > 0 (1: one "
                "learning rate for the whole network)."
            )
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise LightsegError(
                f"optimizer.freeze_encoder_epochs={epochs!r} must be a whole number >= 0."
            )
        return float(multiplier), epochs

    def parameter_groups(self) -> list[dict[str, Any]]:
        """One group at ``optimizer.lr``, or the encoder at lr and the rest at lr x multiplier."""
        multiplier, _ = self.finetuning()
        if multiplier == 1.0:
            return [{"params": list(self.parameters())}]
        encoder = encoder_of(self.net, "optimizer.decoder_lr_multiplier")
        lr = self.hparams.optimizer.get("lr")
        if not isinstance(lr, int | float) or isinstance(lr, bool):
            raise LightsegError(
                "optimizer.decoder_lr_multiplier needs optimizer.lr (the encoder's learning "
                "rate) to be set to a number."
            )
        own = {id(p) for p in encoder.parameters()}
        rest = [p for p in self.parameters() if id(p) not in own]
        return [
            {"name": "encoder", "params": list(encoder.parameters())},
            {"name": "decoder_head", "params": rest, "lr": float(lr) * multiplier},
        ]

    def on_train_start(self) -> None:
        """Settings that only the started trainer can check: the one-cycle length and DDP
        with a frozen encoder."""
        self.check_one_cycle_length()
        _, epochs = self.finetuning()
        wrapped = self.trainer.strategy.model
        ddp = isinstance(wrapped, DistributedDataParallel)
        if epochs and ddp and not wrapped.find_unused_parameters:
            raise LightsegError(
                "optimizer.freeze_encoder_epochs with DDP needs "
                "trainer.strategy=ddp_find_unused_parameters_true (or "
                "ddp_spawn_find_unused_parameters_true): DDP otherwise expects a gradient for "
                "every parameter, and a frozen encoder has none."
            )

    def check_one_cycle_length(self) -> None:
        """A one-cycle schedule cannot take more steps than it was made for, which is what a
        run resumed with more epochs would ask of the one restored from its checkpoint."""
        steps = self.trainer.estimated_stepping_batches
        for config in self.trainer.lr_scheduler_configs:
            made_for = getattr(config.scheduler, "total_steps", None)
            if isinstance(config.scheduler, OneCycleLR) and made_for < steps:
                raise LightsegError(
                    f"This run's one-cycle schedule (scheduler=onecycle) was made for {made_for} "
                    f"steps, but training now lasts {int(steps)}: the length changed since the "
                    "run began (trainer.max_epochs or max_steps, the data or the batch size). "
                    "Continue it with its own length, or start a new run for the longer one."
                )

    def on_train_epoch_start(self) -> None:
        _, epochs = self.finetuning()
        if epochs:
            self.freeze_encoder(self.current_epoch < epochs)

    def freeze_encoder(self, frozen: bool) -> None:
        """Stop (or resume) training the encoder: no gradients, batch norm in eval mode.

        The parameters stay in the optimizer (without gradients it skips them), so schedulers
        and checkpoints see the same groups throughout and a resumed run picks up the state
        of its epoch.
        """
        if frozen == getattr(self, "_encoder_frozen", False):
            return
        encoder = encoder_of(self.net, "optimizer.freeze_encoder_epochs")
        encoder.requires_grad_(not frozen)
        self._encoder_frozen = frozen
        self.train(self.training)
        log.info("Encoder %s at epoch %d.", "frozen" if frozen else "trainable", self.current_epoch)

    def train(self, mode: bool = True) -> SegmentationModule:
        """``nn.Module.train``, keeping a frozen encoder's batch-norm statistics fixed."""
        super().train(mode)
        if mode and getattr(self, "_encoder_frozen", False):
            self.net.encoder.eval()
        return self

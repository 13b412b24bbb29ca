"""SegmentationModule: the training step of any network, task, loss and metric set.

The module a run trains is the ``module`` config node's ``_target_`` (configs/module/), so a
paper that changes the step subclasses this class in a module of its own and names it there:
nothing in ``src/`` changes. The fork points, each a method with one job:

* :meth:`outputs` runs the network on a batch and names what it returned: ``{"logits": ...}``,
  plus ``"aux"`` (a list of auxiliary logits, e.g. deep supervision) and whatever else a network
  returns in a dict (a diagnosis head, an embedding);
* :meth:`loss` turns those outputs and the batch into ``(total, {term name: value})``;
* batches hold every field the dataset gives (``image``, ``mask``, ``id``, and a sample's
  ``extras``: a label, a weight), so a step can read more than image and mask.

Validation and test score ``outputs["logits"]`` with the run's metrics; the test stage also logs
the pixel calibration of their probabilities, ``test/ece`` and ``test/brier``
(:class:`~lightseg.metrics.PixelCalibration`); training logs ``train/loss`` and each
``train/loss_<term>``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.optim.lr_scheduler import OneCycleLR
from torchmetrics import MeanMetric

from lightseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Normalize
from lightseg.errors import LightsegError
from lightseg.losses import build_loss
from lightseg.metrics import PixelCalibration, build_metrics, metric_values, update_per_image
from lightseg.models.network import build_network, check_output, outputs_of
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
    ``torch.load(weights_only=True)``. ``scheduler`` is Lightning's scheduler dict
    (``interval``, ``frequency``, ...) with the scheduler itself under ``scheduler``.
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
        self.eval_metrics = torch.nn.ModuleDict(
            {stage: chosen.clone(prefix=f"{stage}/") for stage in EVAL_STAGES}
        )
        self.eval_losses = torch.nn.ModuleDict({stage: MeanMetric() for stage in EVAL_STAGES})
        # from probabilities, not masks: beside the label metrics, whose contract it keeps
        self.test_calibration = PixelCalibration(self.task.num_classes)
        norm = normalization or {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        self.normalize = Normalize(norm["mean"], norm["std"], norm.get("clip"))

    def setup(self, stage: str) -> None:
        # Every process counts into states of its own. Tensors sent to the ranks ddp_spawn starts
        # share their memory with the launching process (Lightning unshares parameters and
        # buffers, not metric states): the ranks would add into one another's counts, and an
        # evaluation after fit would start from the counts of fit's first validation.
        states = (*self.eval_metrics.values(), *self.eval_losses.values(), self.test_calibration)
        for metrics in states:
            metrics.reset()
        if self.hparams.channels_last and self.device.type == "cuda":  # tensor cores gain
            self.net.to(memory_format=torch.channels_last)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Loaders deliver uint8 images and masks: here, on the device, the images are normalised
        (the only place; eval, predict and export use ``self.normalize``) and the masks widened."""
        return {**batch, "image": self.normalize(batch["image"]), "mask": batch["mask"].long()}

    def forward(self, images: torch.Tensor) -> Any:
        """The network's raw output for normalised images [N, C, H, W]."""
        if self.hparams.channels_last and images.is_cuda:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.net(images)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The class itself is stored too: tools rebuild a fork's subclass (load_module)."""
        checkpoint["module"] = f"{type(self).__module__}.{type(self).__qualname__}"

    # --- the fork points ----------------------------------------------------------------

    def outputs(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The network's outputs for a batch, named (``logits`` checked against the contract)."""
        outputs = outputs_of(self(batch["image"]))
        check_output(outputs["logits"], batch["image"], self.task.out_channels)
        return outputs

    def loss(
        self, outputs: Mapping[str, Any], batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of the main logits, plus each auxiliary output's (upsampled to the mask)
        weighted by the network's ``aux_weight`` (one number, or one per auxiliary output)."""
        target = batch["mask"]
        total, parts = self.criterion(outputs["logits"], target)
        auxiliary = list(outputs.get("aux") or ())
        if not auxiliary:
            return total, parts
        count, declared = len(auxiliary), getattr(self.net, "aux_weight", None)
        weights = list(declared) if isinstance(declared, Sequence) else [declared] * count
        if declared is None or len(weights) != count:
            raise LightsegError(
                f"{type(self.net).__name__} returned {count} auxiliary output(s) but its "
                "aux_weight attribute does not weigh them: set self.aux_weight to one number, "
                f"or to a list of {count} numbers (the auxiliary losses' weights)."
            )
        for index, (aux, weight) in enumerate(zip(auxiliary, weights, strict=True)):
            if aux.shape[-2:] != target.shape[-2:]:
                aux = F.interpolate(aux, size=target.shape[-2:], mode="bilinear")
            name = "aux" if index == 0 else f"aux{index + 1}"
            parts[name] = self.criterion(aux, target)[0]
            total = total + float(weight) * parts[name]
        return total, parts

    # --- the steps ------------------------------------------------------------------------

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, parts = self.loss(self.outputs(batch), batch)
        size = batch["image"].shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=size)
        terms = {f"train/loss_{k}": v for k, v in parts.items()}  # each term's epoch mean
        self.log_dict(terms, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def _eval_step(self, batch: dict, stage: str) -> torch.Tensor:
        """Accumulate the batch's loss; returns its predicted masks (for the metrics)."""
        outputs = self.outputs(batch)
        loss, _ = self.loss({"logits": outputs["logits"]}, batch)
        self.eval_losses[stage].update(loss, weight=batch["image"].shape[0])
        if stage == "test":
            probabilities = self.task.probabilities(outputs["logits"])
            self.test_calibration.update(probabilities, batch["mask"])
        return self.task.predict(outputs["logits"])

    def _log_eval_epoch(self, stage: str) -> None:
        values = {f"{stage}/loss": float(self.eval_losses[stage].compute())}
        values.update(metric_values(self.eval_metrics[stage], self.task))
        if stage == "test":
            calibration = self.test_calibration.compute()
            values.update({f"test/{name}": float(value) for name, value in calibration.items()})
            self.test_calibration.reset()
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

    # --- optimisation -----------------------------------------------------------------------

    def configure_optimizers(self) -> dict:
        """The optimizer over the parameter groups (one group, reshaped by every callback that
        has ``parameter_groups(module, groups)``: lightseg.callbacks.Finetuning), and the
        scheduler with its length filled in from the trainer where the config leaves it null."""
        groups = [{"name": "network", "params": list(self.parameters())}]
        for callback in self.trainer.callbacks if self._trainer else ():
            if hasattr(callback, "parameter_groups"):
                groups = callback.parameter_groups(self, groups)
        # partial: Hydra would turn the parameter groups (dicts) into configs
        optimizer = instantiate(dict(self.hparams.optimizer), _partial_=True)(groups)
        if not self.hparams.scheduler:
            return {"optimizer": optimizer}
        config = dict(self.hparams.scheduler)
        node = dict(config.pop("scheduler", None) or {})
        if "_target_" not in node:
            raise LightsegError(
                "scheduler.scheduler._target_ is not set: the scheduler config is Lightning's "
                "scheduler dict, {interval: step|epoch, scheduler: {_target_: ...}} "
                "(configs/scheduler/*.yaml), or scheduler=none."
            )
        steps = config.get("interval", "epoch") == "step"
        length = self.trainer.estimated_stepping_batches if steps else self.trainer.max_epochs
        for key in SCHEDULE_LENGTH_ARGS:
            if key in node and node[key] is None:
                node[key] = int(length)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {**config, "scheduler": instantiate(node, optimizer=optimizer)},
        }

    def on_train_start(self) -> None:
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

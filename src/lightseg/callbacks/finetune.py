"""Transfer learning: the network's ``encoder`` frozen for the first epochs (no gradients, batch
norm statistics kept), at its own learning rate, layer by layer slower towards its input (BEiT's
and MAE's layer-wise decay). Its parameters stay in the optimizer throughout, so schedulers see
the same groups from start to end, and a resumed run freezes or thaws by its epoch as before.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback
from timm.optim import param_groups_layer_decay
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lightseg.errors import LightsegError

log = logging.getLogger(__name__)


def encoder_of(network: nn.Module) -> nn.Module:
    """The network's ``encoder`` module, or an error saying that fine-tuning needs one."""
    encoder = getattr(network, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise LightsegError(
            f"callbacks.finetuning needs the network's encoder, but {type(network).__name__} has "
            "no `encoder` module. Give your network an `encoder` attribute (its pretrained "
            "feature extractor), or leave callbacks.finetuning at freeze_encoder_epochs=0 and "
            "decoder_lr_multiplier=1."
        )
    return encoder


class Finetuning(Callback):
    """``freeze_encoder_epochs``: the encoder stays frozen that many epochs.
    ``decoder_lr_multiplier``: the decoder and head learn at ``optimizer.lr`` times this.
    ``layer_decay``: each layer of a timm encoder learns at this times the rate of the layer above
    (timm's ``param_groups_layer_decay``, which exempts biases and norms from weight decay)."""

    def __init__(
        self,
        freeze_encoder_epochs: int = 0,
        decoder_lr_multiplier: float = 1.0,
        layer_decay: float = 1.0,
    ) -> None:
        epochs, factor, decay = freeze_encoder_epochs, decoder_lr_multiplier, layer_decay
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise LightsegError(
                f"callbacks.finetuning.freeze_encoder_epochs={epochs!r} must be a whole number "
                ">= 0."
            )
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor > 0:
            raise LightsegError(
                f"callbacks.finetuning.decoder_lr_multiplier={factor!r} must be a number > 0 "
                "(1: one learning rate for the whole network)."
            )
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 < decay <= 1:
            raise LightsegError(
                f"callbacks.finetuning.layer_decay={decay!r} must be a number in (0, 1] "
                "(1: every encoder layer at the same rate; ViT recipes use 0.65-0.9)."
            )
        self.freeze_epochs, self.multiplier, self.layer_decay = int(epochs), factor, decay
        self.frozen, self.trainable = False, set()

    def parameter_groups(self, module: L.LightningModule, groups: list[dict]) -> list[dict]:
        """The encoder at the optimizer's rate, the rest at rate x multiplier (asked by
        SegmentationModule.configure_optimizers)."""
        if self.multiplier == 1.0 and self.layer_decay == 1.0:
            return groups
        lr = module.hparams.optimizer.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, int | float):
            raise LightsegError(
                "callbacks.finetuning.decoder_lr_multiplier and layer_decay need optimizer.lr "
                "(the encoder's learning rate) to be a number."
            )
        encoder = encoder_of(module.net)
        own = {id(p) for p in encoder.parameters()}
        rest = [p for group in groups for p in group["params"] if id(p) not in own]
        decoder = {"name": "decoder_head", "params": rest, "lr": float(lr) * self.multiplier}
        if self.layer_decay == 1.0:
            return [{"name": "encoder", "params": list(encoder.parameters())}, decoder]
        return [*self.layer_groups(encoder, float(lr), module.hparams.optimizer), decoder]

    def layer_groups(self, encoder: nn.Module, lr: float, optimizer: dict) -> list[dict]:
        """One group per layer (and with or without weight decay) of the timm model inside
        ``encoder`` (smp's ``tu-`` encoders hold it as ``model``), at ``lr`` x its scale."""
        timm_model = next(
            (m for m in (getattr(encoder, "model", None), encoder) if hasattr(m, "group_matcher")),
            None,
        )
        if timm_model is None:
            raise LightsegError(
                f"callbacks.finetuning.layer_decay needs a timm encoder that names its layers "
                f"(model.encoder_name=tu-<timm name>), but the encoder is "
                f"{type(encoder).__name__}. Set callbacks.finetuning.layer_decay=1."
            )
        decay = optimizer.get("weight_decay")
        groups = param_groups_layer_decay(
            timm_model, weight_decay=decay or 0.0, layer_decay=self.layer_decay
        )
        for group in groups:
            group.pop("param_names", None)  # torch wants names in every group or in none
            group["lr"] = lr * group["lr_scale"]
            if decay is None:  # the optimizer's own default for all
                del group["weight_decay"]
        frozen = [p for p in encoder.parameters() if not p.requires_grad]  # LoRA's base weights
        return [*groups, {"name": "encoder_frozen", "params": frozen}] if frozen else groups

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        wrapped = trainer.strategy.model
        ddp = isinstance(wrapped, DistributedDataParallel)
        if self.freeze_epochs and ddp and not wrapped.find_unused_parameters:
            raise LightsegError(
                "callbacks.finetuning.freeze_encoder_epochs with DDP needs "
                "trainer.strategy=ddp_find_unused_parameters_true (or "
                "ddp_spawn_find_unused_parameters_true): DDP otherwise expects a gradient for "
                "every parameter, and a frozen encoder has none."
            )

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.freeze_epochs:
            self.freeze(pl_module.net, trainer.current_epoch < self.freeze_epochs)

    def freeze(self, network: nn.Module, frozen: bool) -> None:
        if frozen == self.frozen:
            return
        encoder = encoder_of(network)
        if frozen:  # what trains when thawed (LoRA: the adapters only)
            self.trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
        if hasattr(network, "freeze_encoder"):  # smp: also keeps BN statistics in train()
            (network.freeze_encoder if frozen else network.unfreeze_encoder)()
        else:
            # Lightning sets train() before each epoch, this runs after it
            encoder.train(network.training and not frozen)
        for name, parameter in encoder.named_parameters():
            parameter.requires_grad_(not frozen and name in self.trainable)
        self.frozen = frozen
        log.info("Encoder %s.", "frozen" if frozen else "trainable")

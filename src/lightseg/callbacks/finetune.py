"""Transfer learning: the network's ``encoder`` frozen for the first epochs (no gradients,
batch norm statistics kept), and learning at its own rate.

The encoder's parameters stay in the optimizer throughout (without gradients it skips them), so
every scheduler sees the same groups from start to end, and a resumed run freezes or thaws by
its epoch exactly as the uninterrupted run did.
"""

from __future__ import annotations

import logging

import lightning as L
from lightning.pytorch.callbacks import Callback
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
    """``freeze_encoder_epochs``: the encoder stays frozen for that many epochs, then trains.
    ``decoder_lr_multiplier``: the decoder and head learn at ``optimizer.lr`` times this, the
    encoder at ``optimizer.lr`` (1: one rate for the whole network)."""

    def __init__(self, freeze_encoder_epochs: int = 0, decoder_lr_multiplier: float = 1.0) -> None:
        epochs, factor = freeze_encoder_epochs, decoder_lr_multiplier
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
        self.freeze_epochs, self.multiplier = int(epochs), float(factor)
        self.frozen = False

    def parameter_groups(self, module: L.LightningModule, groups: list[dict]) -> list[dict]:
        """The encoder at the optimizer's rate, the rest at rate x multiplier (see
        SegmentationModule.configure_optimizers, which asks every callback that has this)."""
        if self.multiplier == 1.0:
            return groups
        lr = module.hparams.optimizer.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, int | float):
            raise LightsegError(
                "callbacks.finetuning.decoder_lr_multiplier needs optimizer.lr (the encoder's "
                "learning rate) to be a number."
            )
        encoder = list(encoder_of(module.net).parameters())
        own = {id(p) for p in encoder}
        rest = [p for group in groups for p in group["params"] if id(p) not in own]
        return [
            {"name": "encoder", "params": encoder},
            {"name": "decoder_head", "params": rest, "lr": float(lr) * self.multiplier},
        ]

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
        if hasattr(network, "freeze_encoder"):  # smp: also keeps BN statistics in train()
            (network.freeze_encoder if frozen else network.unfreeze_encoder)()
        else:
            encoder = encoder_of(network).requires_grad_(not frozen)
            # Lightning sets train() before each epoch, this runs after it
            encoder.train(network.training and not frozen)
        self.frozen = frozen
        log.info("Encoder %s.", "frozen" if frozen else "trainable")

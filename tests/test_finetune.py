"""Transfer learning: the encoder frozen for the first epochs, and its own learning rate."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightseg.callbacks import Finetuning
from lightseg.errors import LightsegError
from lightseg.experiment import build
from lightseg.models import SegmentationModule
from lightseg.train import train
from tests.conftest import BINARY_METRICS, CE_DICE, make_config

TINY = (
    "experiment=demo",
    "trainer.accelerator=cpu",
    "data.num_workers=0",
    "data.batch_size=4",
    "data.image_size=[64,64]",
    "data.source.num_cases=12",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
)


class Snapshots(Callback):
    """The encoder's and decoder's parameters and the encoder's BN statistics after each epoch."""

    def __init__(self) -> None:
        self.states: list[dict[str, dict[str, torch.Tensor]]] = []

    def on_train_start(self, trainer, module):
        self.states.append(self.state(module))

    def on_train_epoch_end(self, trainer, module):
        self.states.append(self.state(module))

    @staticmethod
    def state(module):
        net = module.net
        return {
            "encoder": {k: v.detach().clone() for k, v in net.encoder.named_parameters()},
            "decoder": {k: v.detach().clone() for k, v in net.decoder.named_parameters()},
            "bn": {"mean": net.encoder.bn1.running_mean.clone()},
        }


def changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


def test_the_encoder_is_frozen_for_the_first_epochs_then_trains(tmp_path, data_dir, one_thread):
    cfg = make_config(
        tmp_path,
        *TINY,
        "trainer.max_epochs=3",
        "logger=none",
        "callbacks=none",
        "+callbacks.finetuning._target_=lightseg.callbacks.Finetuning",
        "+callbacks.finetuning.freeze_encoder_epochs=2",
        data_dir=data_dir,
    )
    experiment = build(cfg, enable_checkpointing=False, enable_progress_bar=False)
    snapshots = Snapshots()
    experiment.trainer.callbacks.append(snapshots)
    experiment.trainer.fit(experiment.module, datamodule=experiment.datamodule)
    module = experiment.module
    start, epoch0, epoch1, epoch2 = snapshots.states
    for frozen in (epoch0, epoch1):  # epochs 0 and 1: encoder weights and BN statistics fixed
        assert not changed(start["encoder"], frozen["encoder"])
        assert torch.equal(start["bn"]["mean"], frozen["bn"]["mean"])
    assert changed(start["decoder"], epoch0["decoder"])  # ... while the decoder learns
    assert changed(epoch1["encoder"], epoch2["encoder"])  # epoch 2: the encoder learns too
    assert not torch.equal(epoch1["bn"]["mean"], epoch2["bn"]["mean"])
    assert all(p.requires_grad for p in module.net.encoder.parameters())


def test_decoder_and_head_learn_at_a_multiple_of_the_encoder_rate(tmp_path, data_dir, one_thread):
    cfg = make_config(
        tmp_path,
        *TINY,
        "trainer.max_epochs=1",
        "logger=csv",
        "scheduler=none",
        "optimizer.lr=0.001",
        "callbacks.finetuning.decoder_lr_multiplier=10",
        "callbacks.progress_bar=null",
        data_dir=data_dir,
    )
    train(cfg)
    (log,) = (tmp_path / "run").rglob("metrics.csv")
    rates = pd.read_csv(log)
    assert rates["lr-AdamW/encoder"].dropna().tolist() == [pytest.approx(0.001)]
    assert rates["lr-AdamW/decoder_head"].dropna().tolist() == [pytest.approx(0.01)]


def groups(module: SegmentationModule, **options) -> list[dict]:
    """The optimizer's parameter groups with the fine-tuning callback ``options``."""
    return Finetuning(**options).parameter_groups(module, [{"params": list(module.parameters())}])


def test_the_groups_split_the_parameters_exactly_once(data_dir):
    module = SegmentationModule(
        model={"_target_": "lightseg.models.smp_models.build", "encoder_name": "resnet18"},
        loss=CE_DICE,
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        classes=["background", "lesion"],
        metrics=BINARY_METRICS,
    )
    encoder_group, rest = groups(module, decoder_lr_multiplier=5)
    assert encoder_group["params"] == list(module.net.encoder.parameters())
    assert rest["lr"] == pytest.approx(0.5) and "lr" not in encoder_group
    ids = [id(p) for group in (encoder_group, rest) for p in group["params"]]
    assert sorted(ids) == sorted(id(p) for p in module.parameters())
    head = {id(p) for p in module.net.segmentation_head.parameters()}
    assert head <= {id(p) for p in rest["params"]}


def test_torchvision_models_offer_their_backbone_as_encoder():
    module = SegmentationModule(
        model={
            "_target_": "lightseg.models.torchvision_models.build",
            "arch": "lraspp_mobilenet_v3_large",
        },
        loss=CE_DICE,
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        classes=["background", "lesion"],
    )
    encoder_group, _ = groups(module, decoder_lr_multiplier=10)
    assert encoder_group["params"] == list(module.net.net.backbone.parameters())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"decoder_lr_multiplier": 10}, r"Conv2d has no `encoder` module"),
        ({"decoder_lr_multiplier": True}, r"decoder_lr_multiplier=True must be a number > 0"),
        ({"decoder_lr_multiplier": 0}, r"decoder_lr_multiplier=0 must be a number > 0"),
        ({"freeze_encoder_epochs": -1}, r"freeze_encoder_epochs=-1 must be a whole number >= 0"),
    ],
)
def test_settings_that_cannot_work_are_named(options, message):
    module = SegmentationModule(  # a network without an encoder: one convolution
        model={"_target_": "torch.nn.Conv2d", "in_channels": 3, "kernel_size": 1},
        loss=CE_DICE,
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        classes=["background", "lesion"],
    )
    with pytest.raises(LightsegError, match=message):
        groups(module, **options)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp_spawn", "ddp_spawn_find_unused_parameters_true"])
def test_freezing_under_ddp_needs_the_find_unused_strategy(tmp_path, data_dir, strategy):
    cfg = make_config(
        tmp_path,
        *TINY,
        "trainer=ddp_sim",
        f"trainer.strategy={strategy}",
        "trainer.max_epochs=2",
        "trainer.limit_test_batches=1",
        "logger=none",
        "callbacks=none",
        "+callbacks.finetuning._target_=lightseg.callbacks.Finetuning",
        "+callbacks.finetuning.freeze_encoder_epochs=1",
        data_dir=data_dir,
    )
    if strategy == "ddp_spawn":
        with pytest.raises(
            Exception, match=r"needs trainer.strategy=ddp_find_unused_parameters_true"
        ):
            train(cfg)
    else:
        assert 0.0 <= train(cfg)["test/dice"] <= 1.0

"""Every smp architecture builds and steps; the network contract; the module trains, schedules
and fails clearly."""

from __future__ import annotations

import socket
import time

import huggingface_hub
import pytest
import segmentation_models_pytorch as smp
import torch
from torch import nn

from lightseg.errors import LightsegError
from lightseg.models import SegmentationModule, build_network, check_network, input_multiple
from lightseg.models.smp_models import ARCHITECTURES
from tests.conftest import CE_DICE, metrics_for

SMP = "lightseg.models.smp_models.build"


def build_model(arch: str, out_channels: int, **options) -> nn.Module:
    return build_network({"_target_": SMP, "arch": arch, **options}, out_channels)


# Measured limits: PAN pools to 0x0 below 128 px; DPT takes timm ("tu-") encoders only.
SIZE = {"pan": 128}
ENCODER = {"dpt": "tu-resnet18", "segformer": "mobilenet_v2"}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_smp_architecture_steps_once(arch):
    size = SIZE.get(arch, 64)
    name = ARCHITECTURES[arch].__name__
    net = build_model(name, out_channels=3, encoder_name=ENCODER.get(arch, "resnet18"))
    images, target = torch.randn(2, 3, size, size), torch.randint(0, 3, (2, size, size))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    logits = net(images)
    assert logits.shape == (2, 3, size, size)  # full-resolution logits
    torch.nn.functional.cross_entropy(logits, target).backward()
    before = [p.detach().clone() for p in net.parameters()]
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_unknown_architecture_and_encoder_are_clear_errors():
    with pytest.raises(LightsegError, match=r"model.arch='UNet3D' is not an smp .*Unet"):
        build_model("UNet3D", out_channels=1)
    with pytest.raises(LightsegError, match=r"model.decoder_chanels: not an option of .*Unet"):
        build_model("Unet", out_channels=1, encoder_name="resnet18", decoder_chanels=[8])
    with pytest.raises(LightsegError, match=r"model.encoder_name='resnet19'"):
        build_model("Unet", out_channels=1, encoder_name="resnet19")


def test_offline_pretrained_weights_explain_the_fix(monkeypatch):
    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("no connection, not in cache")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    with pytest.raises(LightsegError) as error:
        build_model("Unet", out_channels=1, encoder_name="resnet18", encoder_weights="imagenet")
    message = str(error.value)
    assert "model.encoder_weights=null" in message and "~/.cache/huggingface" in message


def module(scheduler=None, classes=("background", "lesion")) -> SegmentationModule:
    return SegmentationModule(
        model={"_target_": SMP, "arch": "FPN", "encoder_name": "resnet18", "encoder_weights": None},
        loss=CE_DICE,
        metrics=metrics_for(classes),
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        scheduler=scheduler,
        classes=list(classes),
    )


@pytest.mark.parametrize(("classes", "channels"), [(("bg", "fg"), 1), (("a", "b", "c", "d"), 4)])
def test_output_channels_follow_the_task(classes, channels):
    assert module(classes=classes)(torch.randn(1, 3, 64, 64)).shape == (1, channels, 64, 64)


def test_schedule_length_is_filled_in_from_the_trainer():
    net = module(
        {
            "interval": "step",
            "scheduler": {
                "_target_": "torch.optim.lr_scheduler.PolynomialLR",
                "total_iters": None,
                "power": 0.9,
            },
        }
    )
    net.trainer = type(
        "T", (), {"estimated_stepping_batches": 40, "max_epochs": 5, "callbacks": []}
    )()
    config = net.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step" and scheduler.total_iters == 40
    for _ in range(20):
        config["optimizer"].step()
        scheduler.step()
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**0.9)


class HalfResolution(nn.Module):
    """Breaks the contract: predicts at half the input resolution."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, out_channels, 3, stride=2, padding=1)

    def forward(self, images):
        return self.conv(images)


class NeedsSixteen(HalfResolution):
    input_multiple = 16

    def forward(self, images):
        return nn.functional.interpolate(self.conv(images), size=images.shape[-2:])


def test_network_contract_is_checked_before_training():
    half = {"_target_": f"{__name__}.HalfResolution"}
    with pytest.raises(LightsegError, match=r"maps images \(1, 3, 64, 64\) to \(1, 2, 32, 32\)"):
        check_network(half, 2, 3, (64, 64))
    sixteen = {"_target_": f"{__name__}.NeedsSixteen"}
    check_network(sixteen, 2, 3, (64, 96))
    with pytest.raises(
        LightsegError, match=r"multiples of 16. Use e.g. data.image_size=\[64, 96\]"
    ):
        check_network(sixteen, 2, 3, (64, 100))
    assert input_multiple(build_network(sixteen, 2)) == 16


def test_smp_divisibility_is_the_networks_own():
    fpn = build_model("FPN", 1, encoder_name="resnet18")
    unet = build_model("Unet", 1, encoder_name="resnet18")
    assert input_multiple(fpn) == 32 and input_multiple(unet) == 1  # smp's own flags
    config = {"_target_": SMP, "arch": "FPN", "encoder_name": "resnet18"}
    with pytest.raises(
        LightsegError, match=r"multiples of 32. Use e.g. data.image_size=\[64, 96\]"
    ):
        check_network(config, 1, 3, (64, 100))
    check_network({**config, "arch": "Unet"}, 1, 3, (64, 100))  # smp's Unet takes any size


def test_an_unreachable_hub_fails_at_once_and_stays_online_for_the_next_build(
    monkeypatch, tmp_path
):
    with socket.socket() as probe:  # a port nothing listens on: the hub does not answer
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))  # empty
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(LightsegError, match=r"Could not load pretrained weights 'imagenet'"):
        build_model("Unet", out_channels=1, encoder_name="resnet18", encoder_weights="imagenet")
    assert time.monotonic() - start < 8  # not ~25 s of the hub's retries
    assert huggingface_hub.constants.HF_HUB_OFFLINE is False


def test_check_network_downloads_nothing(monkeypatch):
    def offline(*args, **kwargs):
        raise AssertionError("the size check must not fetch pretrained weights")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    config = {"_target_": SMP, "encoder_name": "resnet18", "encoder_weights": "imagenet"}
    check_network(config, 1, 3, (64, 64))


def test_a_network_returning_aux_logits_needs_an_aux_weight():
    class TwoHeads(nn.Module):
        def __init__(self, out_channels: int) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, out_channels, 1)

        def forward(self, images):
            logits = self.conv(images)
            return (logits, logits) if self.training else logits

    net = module()
    net.net = TwoHeads(1)
    batch = {"image": torch.randn(2, 3, 32, 32), "mask": torch.randint(0, 2, (2, 32, 32))}
    with pytest.raises(LightsegError, match="aux_weight attribute does not weigh them"):
        net.training_step(batch, 0)
    net.net.aux_weight = 0.25
    total = net.training_step(batch, 0)
    main, _ = net.criterion(net.net.eval()(batch["image"]), batch["mask"])
    assert total.item() == pytest.approx(1.25 * main.item(), rel=1e-5)

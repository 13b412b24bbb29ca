"""Every smp architecture builds and steps; the module trains, schedules and fails clearly."""

from __future__ import annotations

import huggingface_hub
import pytest
import segmentation_models_pytorch as smp
import torch

from lightseg.errors import LightsegError
from lightseg.models import SegmentationModule, build_model
from lightseg.models.factory import SMP_ARCHS

# Measured limits: PAN pools to 0x0 below 128 px; DPT takes timm ("tu-") encoders only.
SIZE = {"pan": 128}
ENCODER = {"dpt": "tu-resnet18", "segformer": "mobilenet_v2"}


@pytest.mark.parametrize("arch", sorted(SMP_ARCHS))
def test_every_smp_architecture_steps_once(arch):
    size = SIZE.get(arch, 64)
    net = build_model(SMP_ARCHS[arch], out_channels=3, encoder_name=ENCODER.get(arch, "resnet18"))
    images, target = torch.randn(2, 3, size, size), torch.randint(0, 3, (2, size, size))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    logits = net(images)
    assert logits.shape == (2, 3, size, size)  # full-resolution logits
    torch.nn.functional.cross_entropy(logits, target).backward()
    before = [p.detach().clone() for p in net.parameters()]
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_unknown_architecture_and_encoder_are_clear_errors():
    with pytest.raises(LightsegError, match=r"Unknown model.arch 'UNet3D'.*Unet"):
        build_model("UNet3D", out_channels=1)
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
        model={"arch": "FPN", "encoder_name": "resnet18", "encoder_weights": None},
        loss={"ce": {"weight": 1.0}, "dice": {"weight": 0.5}},
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
            "_target_": "torch.optim.lr_scheduler.PolynomialLR",
            "total_iters": None,
            "power": 0.9,
            "interval": "step",
        }
    )
    net.trainer = type("T", (), {"estimated_stepping_batches": 40, "max_epochs": 5})()
    config = net.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step" and scheduler.total_iters == 40
    for _ in range(20):
        config["optimizer"].step()
        scheduler.step()
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**0.9)

"""Build a segmentation network from the ``model`` config.

``model.arch`` picks the family: any smp architecture (configs/model/smp.yaml), torchvision's
FCN/DeepLabV3/LR-ASPP (configs/model/torchvision.yaml) or SegNet (configs/model/segnet.yaml).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial

import segmentation_models_pytorch as smp
from torch import nn

from lightseg.errors import LightsegError
from lightseg.models.segnet import build_segnet
from lightseg.models.torchvision_models import TORCHVISION_ARCHS, build_torchvision

SMP_ARCHS = {key: model.__name__ for key, model in smp.MODEL_ARCHITECTURES_MAPPING.items()}


def weights_unavailable(what: str, weights: str, error: Exception) -> LightsegError:
    """The error for pretrained weights that cannot be fetched (usually: no internet)."""
    return LightsegError(
        f"Could not load pretrained weights '{weights}' for {what} ({type(error).__name__}: "
        f"{error}). This machine is probably offline. Either train from scratch with "
        "model.encoder_weights=null (model.weights=null for torchvision models), or cache the "
        "weights on a machine with internet by building the same model once, copy "
        "~/.cache/huggingface and ~/.cache/torch to the same places here, and set HF_HUB_OFFLINE=1."
    )


def build_model(arch: str, out_channels: int, **kwargs) -> nn.Module:
    """The network ``model.arch`` names, with ``out_channels`` logits at the input resolution."""
    name = arch.lower()
    if name in SMP_ARCHS:
        return build_smp(arch, out_channels, **kwargs)
    if name in TORCHVISION_ARCHS:
        builder, group = partial(build_torchvision, name), "torchvision"
    elif name == "segnet":
        builder, group = build_segnet, "segnet"
    else:
        available = [*SMP_ARCHS.values(), *TORCHVISION_ARCHS, "SegNet"]
        raise LightsegError(f"Unknown model.arch '{arch}'. Available: {', '.join(available)}.")
    _check_keys(builder, arch, group, kwargs)
    try:
        return builder(out_channels=out_channels, **kwargs)
    except OSError as error:  # torch.hub's download: URLError offline, HTTP and disk errors
        weights = kwargs.get("weights") or kwargs.get("encoder_weights")
        if weights is None:
            raise
        raise weights_unavailable(f"model.arch={arch}", weights, error) from None


def _check_keys(builder: Callable, arch: str, group: str, kwargs: dict) -> None:
    """Name the config keys another family's config left behind (e.g. smp's encoder_name)."""
    unknown = sorted(set(kwargs) - set(inspect.signature(builder).parameters))
    if unknown:
        raise LightsegError(
            f"model.{', model.'.join(unknown)} do(es) not apply to {arch}. Select its config "
            f"group: model={group} model.arch={arch} (keys: configs/model/{group}.yaml)."
        )


def build_smp(
    arch: str,
    out_channels: int,
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    **kwargs,
) -> nn.Module:
    """Any smp architecture with any encoder; logits at the input resolution."""
    try:
        return smp.create_model(
            arch,
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=out_channels,
            **kwargs,
        )
    except KeyError as error:  # smp's message for an unknown encoder lists the valid ones
        raise LightsegError(
            f"model.encoder_name='{encoder_name}' does not work with {arch}: {error.args[0]}"
        ) from None
    except OSError as error:
        if encoder_weights is None:
            raise
        raise weights_unavailable(f"encoder '{encoder_name}'", encoder_weights, error) from None

"""Build a segmentation network from the ``model`` config."""

from __future__ import annotations

import segmentation_models_pytorch as smp
from torch import nn

from lightseg.errors import LightsegError

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


def build_model(
    arch: str,
    out_channels: int,
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    **kwargs,
) -> nn.Module:
    """Any smp architecture with any encoder; logits at the input resolution."""
    if arch.lower() not in SMP_ARCHS:
        raise LightsegError(
            f"Unknown model.arch '{arch}'. Available: {', '.join(SMP_ARCHS.values())}."
        )
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

"""Any segmentation-models-pytorch architecture and encoder (``model=smp``).

``model.arch`` is any smp architecture name, ``model.encoder_name`` any smp encoder or
``tu-<timm name>``; every other key is an option of that architecture's class (e.g.
``decoder_channels`` for Unet, ``encoder_output_stride`` for DeepLabV3Plus) and is checked
against it, so a key that belongs to another architecture or family is an error, not ignored.
"""

from __future__ import annotations

import inspect

import segmentation_models_pytorch as smp
from torch import nn

from lightseg.errors import LightsegError
from lightseg.models.network import weights_unavailable

#: lower-case name -> architecture class (Unet, FPN, DeepLabV3Plus, ...)
ARCHITECTURES: dict[str, type[nn.Module]] = dict(smp.MODEL_ARCHITECTURES_MAPPING)
#: Arguments this builder sets itself; the rest of the config goes to the architecture.
OWN_ARGUMENTS = ("encoder_name", "encoder_weights", "in_channels", "classes")


def build(
    out_channels: int,
    arch: str = "Unet",
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    **options,
) -> nn.Module:
    """smp's ``arch`` with ``encoder_name``; logits at the input resolution."""
    architecture = ARCHITECTURES.get(str(arch).lower())
    if architecture is None:
        names = ", ".join(cls.__name__ for cls in ARCHITECTURES.values())
        raise LightsegError(
            f"model.arch='{arch}' is not an smp architecture. Available: {names}. "
            "torchvision's models are model=torchvision, SegNet is model=segnet."
        )
    accepted = set(inspect.signature(architecture.__init__).parameters) - {"self", *OWN_ARGUMENTS}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise LightsegError(
            f"model.{', model.'.join(unknown)}: not an option of smp's {architecture.__name__} "
            f"(model=smp, model.arch={arch}). Its options: {', '.join(sorted(accepted))}."
        )
    try:
        return architecture(
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=out_channels,
            **options,
        )
    except (KeyError, RuntimeError) as error:
        message = str(error.args[0] if error.args else error)
        if "encoder" not in message.lower() and "unknown model" not in message.lower():
            raise
        raise LightsegError(
            f"model.encoder_name='{encoder_name}' does not work with {architecture.__name__}: "
            f"{message[:1500]}"
        ) from None
    except OSError as error:  # hub downloads: offline, HTTP and disk errors
        if encoder_weights is None:
            raise
        raise weights_unavailable(f"encoder '{encoder_name}'", encoder_weights, error) from None

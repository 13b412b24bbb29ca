"""torchvision's segmentation models (``model=torchvision``): FCN (Long et al., 2015), DeepLabV3
(Chen et al., 2017) and LR-ASPP (Howard et al., 2019), wrapped to return logits at the input
size like every other network here (and ``(logits, aux_logits)`` in training with an aux head).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models import WeightsEnum, get_model_builder, get_model_weights
from torchvision.models.segmentation import LRASPP
from torchvision.models.segmentation.deeplabv3 import ASPP

from lightseg.errors import LightsegError
from lightseg.models.network import weights_unavailable

#: Weight of the auxiliary head's loss in torchvision's reference recipe.
AUX_WEIGHT = 0.5
#: Output stride of the backbone -> which ResNet stages trade their stride for dilation.
RESNET_DILATION = {8: [False, True, True], 16: [False, False, True]}
TORCHVISION_ARCHS = (
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)


class TorchvisionSegmentation(nn.Module):
    """A torchvision segmentation model returning logits at the input resolution; in training
    also the auxiliary logits, whose loss ``aux_weight`` weighs (lightseg.models.network)."""

    def __init__(self, net: nn.Module, aux_weight: float = AUX_WEIGHT) -> None:
        super().__init__()
        self.net = net
        self.aux_weight = float(aux_weight)

    @property
    def encoder(self) -> nn.Module:
        """The backbone (the network contract's ``encoder``: frozen or given its own lr)."""
        return self.net.backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        size = images.shape[-2:]
        upsample = partial(F.interpolate, size=size, mode="bilinear", align_corners=False)
        features = self.net.backbone(images)
        if isinstance(self.net, LRASPP):  # its head reads the low- and high-level features
            return upsample(self.net.classifier(features))
        logits = upsample(self.net.classifier(features["out"]))
        if self.training and self.net.aux_classifier is not None:
            return logits, upsample(self.net.aux_classifier(features["aux"]))
        return logits


def config_weights(enum: type[WeightsEnum], value: str | None, key: str, owner: str):
    """The member of a torchvision weights ``enum`` that config ``model.<key>`` names (or None)."""
    try:
        return enum.verify(value)
    except (KeyError, ValueError):
        names = ", ".join(member.name for member in enum)
        raise LightsegError(
            f"model.{key}='{value}' is not a weight set of {owner}. Available: {names}, or null."
        ) from None


def _replace_class_convs(head: nn.Module, old: int, new: int) -> None:
    """Swap the convolutions that output ``old`` classes for fresh ones that output ``new``."""
    for name, module in list(head.named_modules()):
        if isinstance(module, nn.Conv2d) and module.out_channels == old:
            parent = head.get_submodule(name.rpartition(".")[0])
            fresh = nn.Conv2d(module.in_channels, new, module.kernel_size, bias=True)
            setattr(parent, name.rpartition(".")[2], fresh)


def build(
    out_channels: int,
    arch: str = "deeplabv3_resnet50",
    weights: str | None = None,
    encoder_weights: str | None = None,
    aux_weight: float = AUX_WEIGHT,
    output_stride: int | None = None,
    atrous_rates: Sequence[int] | None = None,
    in_channels: int = 3,
) -> TorchvisionSegmentation:
    """Build ``arch`` with torchvision's builder (keys: configs/model/torchvision.yaml); other
    class counts than ``weights``' get fresh class convolutions, and the auxiliary head exists
    iff ``aux_weight > 0`` (FCN and DeepLabV3 only)."""
    arch = str(arch).lower()
    if arch not in TORCHVISION_ARCHS:
        raise LightsegError(
            f"model.arch='{arch}' is not one of torchvision's segmentation models "
            f"(model=torchvision): {', '.join(TORCHVISION_ARCHS)}. smp architectures are "
            "model=smp, SegNet is model=segnet."
        )
    resnet = "resnet" in arch
    if in_channels != 3:
        raise LightsegError(f"{arch} takes RGB images; model.in_channels must be 3.")
    if output_stride not in (None, 8, 16) or (output_stride == 8 and not resnet):
        allowed = "8 or 16" if resnet else "16 (its MobileNetV3 backbone is dilated once)"
        raise LightsegError(f"model.output_stride={output_stride} for {arch}: use {allowed}.")
    if atrous_rates is not None and not arch.startswith("deeplabv3"):
        raise LightsegError(
            f"model.atrous_rates sets DeepLabV3's ASPP; {arch} has none. Set it to null."
        )
    full = config_weights(get_model_weights(arch), weights, "weights", arch)
    # the backbone's weights enum: the type of the builder's default, e.g. ResNet50_Weights
    default = inspect.signature(get_model_builder(arch)).parameters["weights_backbone"].default
    backbone = config_weights(
        type(default), encoder_weights, "encoder_weights", f"{arch}'s backbone"
    )
    has_aux = not arch.startswith("lraspp")
    options: dict = {"weights": full, "weights_backbone": backbone}
    if full is None:  # with whole-model weights torchvision fixes both to the weights' values
        options["num_classes"] = out_channels
        if has_aux:
            options["aux_loss"] = aux_weight > 0
    try:
        net = get_model_builder(arch)(**options)
    except OSError as error:  # torch.hub's download: URLError offline, HTTP and disk errors
        if full is None and backbone is None:
            raise
        named = weights if full is not None else encoder_weights
        raise weights_unavailable(f"model.arch={arch}", named, error) from None
    if full is not None:
        pretrained_classes = len(full.meta["categories"])
        if has_aux and aux_weight <= 0:
            net.aux_classifier = None
        if out_channels != pretrained_classes:
            for head in (net.classifier, getattr(net, "aux_classifier", None)):
                if head is not None:
                    _replace_class_convs(head, pretrained_classes, out_channels)
    if resnet and output_stride is not None:  # ResNet stages 3-4 rebuilt, same weights
        dilated = getattr(torchvision.models, arch.split("_")[-1])(
            weights=None, replace_stride_with_dilation=RESNET_DILATION[output_stride]
        )
        for stage in ("layer3", "layer4"):
            getattr(dilated, stage).load_state_dict(net.backbone[stage].state_dict())
            net.backbone[stage] = getattr(dilated, stage)
    if atrous_rates is not None:  # the ASPP rebuilt; with as many rates, the same weights
        old = net.classifier[0]
        aspp = ASPP(old.convs[0][0].in_channels, [int(rate) for rate in atrous_rates])
        if len(aspp.convs) == len(old.convs):  # dilation does not change any parameter's shape
            aspp.load_state_dict(old.state_dict())
        net.classifier[0] = aspp
    return TorchvisionSegmentation(net, aux_weight)

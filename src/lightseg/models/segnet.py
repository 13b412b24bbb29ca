"""SegNet (Badrinarayanan, Kendall & Cipolla, TPAMI 2017).

A VGG16-BN-shaped encoder whose five 2x2 max-poolings remember where each maximum came from,
and a mirrored decoder that unpools to exactly those positions (zeros elsewhere) before its
convolutions densify the map again. No skip connections carry features: only the indices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from lightseg.errors import LightsegError
from lightseg.models.network import weights_unavailable
from lightseg.models.torchvision_models import config_weights

#: Convolution widths of VGG16's five blocks; each block ends with a 2x2 max-pooling.
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def pool(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
    """2x2 max-pooling that also returns the argmax indices and the input size for unpooling."""
    pooled, indices = F.max_pool2d(x, kernel_size=2, stride=2, return_indices=True)
    return pooled, indices, x.shape[-2:]


def unpool(x: torch.Tensor, indices: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Put each value back where ``pool`` found it, in a zero map of the pre-pooling ``size``."""
    if torch.jit.is_tracing():
        # max_unpool2d's size check rejects the tensor sizes tracing yields (torch 2.x); the
        # same scatter into a flat map traces with sizes that follow the input (TorchScript).
        n, c = x.shape[:2]
        height, width = size
        flat = x.new_zeros(n, c, height * width).scatter_(2, indices.flatten(2), x.flatten(2))
        return flat.view(n, c, height, width)
    return F.max_unpool2d(x, indices, kernel_size=2, stride=2, output_size=size)


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    # bias=True like torchvision's vgg16_bn, so its weights load one to one
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SegNet(nn.Module):
    """Encoder = VGG16-BN's 13 convolutions; decoder mirrors it; logits at the input size. Any
    size of at least 32 pixels a side works, odd ones too: each unpooling restores its size."""

    def __init__(self, out_channels: int, in_channels: int = 3) -> None:
        super().__init__()
        encoder, decoder = [], []
        previous = in_channels
        for index, widths in enumerate(VGG16_BLOCKS):
            inputs = (previous, *widths[:-1])
            encoder.append(nn.Sequential(*map(conv_bn_relu, inputs, widths)))
            # The mirror: keep the block's width, end with the previous block's width. The
            # first block's last convolution is the classifier instead.
            if index == 0:
                decoder.append(conv_bn_relu(widths[0], widths[0]))
            else:
                outputs = (*widths[:-1], previous)
                decoder.append(nn.Sequential(*map(conv_bn_relu, widths, outputs)))
            previous = widths[-1]
        self.encoder = nn.ModuleList(encoder)
        self.decoder = nn.ModuleList(reversed(decoder))
        self.classifier = nn.Conv2d(VGG16_BLOCKS[0][0], out_channels, 3, padding=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if min(images.shape[-2:]) < 2 ** len(self.encoder):
            raise LightsegError(
                f"SegNet needs images of at least {2 ** len(self.encoder)} pixels per side, got "
                f"{tuple(images.shape[-2:])}. Increase data.image_size."
            )
        x, memory = images, []
        for block in self.encoder:
            x, indices, size = pool(block(x))
            memory.append((indices, size))
        for block, (indices, size) in zip(self.decoder, reversed(memory), strict=True):
            x = block(unpool(x, indices, size))
        return self.classifier(x)

    def load_vgg16_bn(self, vgg: nn.Module) -> None:
        """Copy a torchvision ``vgg16_bn``'s convolution and batch-norm weights into the encoder."""
        source = [m for m in vgg.features if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
        target = [m for m in self.encoder.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
        if source[0].weight.shape != target[0].weight.shape:
            raise LightsegError("VGG16-BN weights need model.in_channels=3.")
        for src, dst in zip(source, target, strict=True):
            dst.load_state_dict(src.state_dict())


def build(out_channels: int, encoder_weights: str | None = None, in_channels: int = 3) -> SegNet:
    """SegNet (``model=segnet``); ``encoder_weights`` names torchvision's VGG16_BN weights
    (``IMAGENET1K_V1``) or null."""
    model = SegNet(out_channels, in_channels)
    if encoder_weights is not None:
        enum = torchvision.models.VGG16_BN_Weights
        weights = config_weights(enum, encoder_weights, "encoder_weights", "VGG16-BN")
        try:
            vgg = torchvision.models.vgg16_bn(weights=weights)
        except OSError as error:  # torch.hub's download: offline, HTTP and disk errors
            raise weights_unavailable("SegNet's VGG16-BN encoder", encoder_weights, error) from None
        model.load_vgg16_bn(vgg)
    return model

"""SegNet: index unpooling, its wiring through the network, VGG16-BN initialisation."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from lightseg.errors import LightsegError
from lightseg.models.segnet import SegNet, pool, unpool


def test_unpool_puts_values_back_at_the_pooled_positions():
    x = torch.tensor(
        [
            [1.0, 2.0, 9.0, 0.0],
            [4.0, 3.0, 0.0, 5.0],
            [0.0, 6.0, 7.0, 0.0],
            [0.0, 0.0, 1.0, 8.0],
        ]
    )[None, None]
    pooled, indices, size = pool(x)
    assert pooled[0, 0].tolist() == [[4.0, 9.0], [6.0, 8.0]]
    assert indices[0, 0].tolist() == [[4, 2], [9, 15]]  # row * 4 + column of each maximum
    restored = unpool(pooled * 10, indices, size)
    expected = torch.tensor(
        [
            [0.0, 0.0, 90.0, 0.0],
            [40.0, 0.0, 0.0, 0.0],
            [0.0, 60.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 80.0],
        ]
    )
    assert torch.equal(restored[0, 0], expected)


def test_unpool_restores_odd_sizes():
    x = torch.arange(35.0).reshape(1, 1, 5, 7)
    pooled, indices, size = pool(x)
    restored = unpool(pooled, indices, size)
    assert pooled.shape == (1, 1, 2, 3) and restored.shape == (1, 1, 5, 7)
    # the maxima of the 2x2 windows of a row-major ramp are their bottom-right corners
    assert restored[0, 0].nonzero().tolist() == [[r, c] for r in (1, 3) for c in (1, 3, 5)]


def test_segnet_decoder_unpools_with_the_encoder_indices():
    """With identity blocks, SegNet is pool x5 then unpool x5: only each 32x32 tile's maximum
    survives, at its own position."""
    model = SegNet(out_channels=1, in_channels=1)
    model.encoder = nn.ModuleList(nn.Identity() for _ in model.encoder)
    model.decoder = nn.ModuleList(nn.Identity() for _ in model.decoder)
    model.classifier = nn.Identity()
    x = torch.zeros(1, 1, 64, 64)
    x[0, 0, 3, 5], x[0, 0, 20, 9] = 2.0, 7.0  # top-left tile: 7 wins
    x[0, 0, 10, 40] = 3.0  # top-right tile
    x[0, 0, 63, 0], x[0, 0, 33, 1] = 1.0, 0.5  # bottom-left tile: 1 wins
    x[0, 0, 50, 50] = -1.0  # bottom-right tile: all <= 0, the first zero wins (value 0)
    expected = torch.zeros_like(x)
    expected[0, 0, 20, 9], expected[0, 0, 10, 40], expected[0, 0, 63, 0] = 7.0, 3.0, 1.0
    assert torch.equal(model(x), expected)


def test_segnet_shapes_and_small_input_error():
    model = SegNet(out_channels=4).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 67)).shape == (1, 4, 45, 67)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 26  # 13 encoder, 12 decoder, 1 classifier
    with pytest.raises(LightsegError, match="at least 32 pixels"):
        model(torch.randn(1, 3, 16, 64))


def test_vgg16_bn_weights_make_the_encoder_vgg16_bn_features():
    torch.manual_seed(0)
    vgg = torchvision.models.vgg16_bn(weights=None)
    for module in vgg.features:
        if isinstance(module, nn.BatchNorm2d):  # non-trivial statistics, so they must match
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    model = SegNet(out_channels=2)
    model.load_vgg16_bn(vgg)
    model.eval(), vgg.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        features = x
        for block in model.encoder:
            features, _, _ = pool(block(features))
        assert torch.allclose(features, vgg.features(x), atol=1e-5)

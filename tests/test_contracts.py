"""lightseg.testing's contracts on lightseg's own extensions: what a fork's one-line test class
gets (tests/test_extending.py runs them on the README's recipes)."""

from __future__ import annotations

from typing import ClassVar

import pytest
from torch import nn

from lightseg.testing import (
    BINARY,
    LossTermContract,
    MetricContract,
    NetworkContract,
    SourceContract,
)


class TestSMPUnet(NetworkContract):
    network: ClassVar = {  # configs/model/unet_resnet18.yaml
        "_target_": "lightseg.models.smp_models.build",
        "arch": "Unet",
        "encoder_name": "resnet18",
        "encoder_weights": None,
    }
    image_size = (32, 32)


class TestSegNet(NetworkContract):
    network: ClassVar = {"_target_": "lightseg.models.segnet.build"}
    image_size = (32, 32)


class TestDice(LossTermContract):
    term: ClassVar = {"_target_": "lightseg.losses.Dice"}


class TestCrossEntropy(LossTermContract):
    term: ClassVar = {"_target_": "lightseg.losses.CrossEntropy", "label_smoothing": 0.1}


class TestIoU(MetricContract):
    metric: ClassVar = {"_target_": "lightseg.metrics.IoU"}


class TestHD95(MetricContract):
    metric: ClassVar = {"_target_": "lightseg.metrics.HD95"}
    tasks = (BINARY,)  # a foreground metric


class TestDemo(SourceContract):
    def make_source(self, tmp_path):
        from lightseg.data.demo import Demo

        return Demo(tmp_path / "PH2Dataset", num_cases=8)


class MeanOfLogits(nn.Module):
    """Averages every pixel, ignored ones too: the contract must refuse it."""

    def forward(self, logits, target):
        return logits.mean()


def test_the_contract_catches_a_term_that_counts_ignored_pixels():
    class Broken(LossTermContract):
        term: ClassVar = {"_target_": f"{__name__}.MeanOfLogits"}

    Broken().test_a_finite_scalar_with_finite_gradients(BINARY)  # that much holds
    with pytest.raises(AssertionError):
        Broken().test_ignored_pixels_do_not_count(BINARY)

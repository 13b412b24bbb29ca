"""Each loss against torch/smp references, with ignored (255) pixels, binary and multiclass."""

from __future__ import annotations

import math

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from lightseg.errors import LightsegError
from lightseg.losses import build_loss
from lightseg.task import IGNORE_INDEX, Task

BINARY, MULTI = Task(("background", "lesion")), Task(("bg", "a", "b", "c"))


def case(task: Task, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random logits and labels with a band of ignored pixels."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, task.out_channels, 6, 7, generator=generator)
    target = torch.randint(0, task.num_classes, (2, 6, 7), generator=generator)
    target[:, 2, :] = IGNORE_INDEX
    target[1, :, 5:] = IGNORE_INDEX
    return logits, target


def only(name: str, task: Task, **options) -> torch.Tensor:
    logits, target = case(task)
    total, parts = build_loss({name: {"weight": 1.0, **options}}, task)(logits, target)
    assert torch.equal(total, parts[name])
    return total


SMP_REFERENCES = {
    "dice": lambda mode: smp.losses.DiceLoss(mode, ignore_index=IGNORE_INDEX),
    "jaccard": lambda mode: smp.losses.JaccardLoss(mode, ignore_index=IGNORE_INDEX),
    "focal": lambda mode: smp.losses.FocalLoss(mode, ignore_index=IGNORE_INDEX),
    "lovasz": lambda mode: smp.losses.LovaszLoss(mode, ignore_index=IGNORE_INDEX),
    "tversky": lambda mode: smp.losses.TverskyLoss(
        mode, ignore_index=IGNORE_INDEX, alpha=0.3, beta=0.7
    ),
}


@pytest.mark.parametrize("task", [BINARY, MULTI], ids=["binary", "multiclass"])
@pytest.mark.parametrize("name", sorted(SMP_REFERENCES))
def test_region_losses_match_smp_with_its_own_ignore_handling(name, task):
    options = {"alpha": 0.3, "beta": 0.7} if name == "tversky" else {}
    logits, target = case(task)
    mode = "binary" if task.binary else "multiclass"
    reference = SMP_REFERENCES[name](mode)(logits, target)
    assert only(name, task, **options).item() == pytest.approx(reference.item(), rel=1e-5)


def test_cross_entropy_matches_torch_with_class_weights_and_ignore():
    logits, target = case(MULTI)
    weights = [0.5, 1.0, 2.0, 1.5]
    reference = F.cross_entropy(
        logits, target, weight=torch.tensor(weights), ignore_index=IGNORE_INDEX
    )
    value = only("ce", MULTI, class_weights=weights)
    assert value.item() == pytest.approx(reference.item(), rel=1e-6)


def test_binary_cross_entropy_averages_over_labelled_pixels_only():
    logits, target = case(BINARY)
    keep = target != IGNORE_INDEX
    reference = F.binary_cross_entropy_with_logits(
        logits[:, 0][keep], target[keep].float(), pos_weight=torch.tensor(3.0)
    )
    assert only("bce", BINARY, pos_weight=3.0).item() == pytest.approx(reference.item(), rel=1e-6)
    assert only("ce", BINARY, pos_weight=3.0).item() == pytest.approx(reference.item(), rel=1e-6)


def test_hand_computed_values():
    # zero logits: BCE is ln 2 whatever the labels; ignored pixels do not dilute it
    target = torch.tensor([[[0, 1], [IGNORE_INDEX, 1]]])
    total, _ = build_loss({"bce": {}}, BINARY)(torch.zeros(1, 1, 2, 2), target)
    assert total.item() == pytest.approx(math.log(2), rel=1e-6)
    # confident logits: predicted {a, b}, true {b, c} -> soft Dice = 1 - 2*1/(2+2) = 0.5
    logits = torch.tensor([[[[20.0, 20.0, -20.0, 20.0]]]])  # last pixel ignored
    target = torch.tensor([[[0, 1, 1, IGNORE_INDEX]]])
    total, _ = build_loss({"dice": {}}, BINARY)(logits, target)
    assert total.item() == pytest.approx(0.5, abs=1e-6)


def test_weighted_sum_combines_terms():
    logits, target = case(MULTI)
    loss = build_loss({"ce": {"weight": 0.7}, "dice": {"weight": 0.3}}, MULTI)
    total, parts = loss(logits, target)
    assert total.item() == pytest.approx(0.7 * parts["ce"].item() + 0.3 * parts["dice"].item())
    assert build_loss({"ce": {}, "dice": None}, MULTI).terms.keys() == {"ce"}


def test_all_ignored_gives_zero_with_a_gradient():
    logits = torch.randn(1, 4, 3, 3, requires_grad=True)
    target = torch.full((1, 3, 3), IGNORE_INDEX)
    total, _ = build_loss({"ce": {}, "dice": {}}, MULTI)(logits, target)
    total.backward()
    assert total.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize(
    ("config", "task", "message"),
    [
        ({"cross_entropy": {}}, MULTI, "Unknown loss term 'loss.cross_entropy'"),
        ({"bce": {}}, MULTI, "loss=bce needs a binary task"),
        ({"dice": {"gama": 2}}, BINARY, "Bad options for loss.dice"),
        ({"ce": {"class_weights": [1, 2]}}, BINARY, "class_weights need a multiclass task"),
        ({}, BINARY, "no terms"),
    ],
)
def test_bad_loss_config_is_a_clear_error(config, task, message):
    with pytest.raises(LightsegError, match=message):
        build_loss(config, task)

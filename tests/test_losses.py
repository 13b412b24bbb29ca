"""Each loss against torch/smp references, with ignored (255) pixels, binary and multiclass."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from lightseg import CONFIG_DIR
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


def term(name: str, weight: float | None = None, **options) -> dict:
    """``loss.<name>`` as configs/loss/<name>.yaml declares it, with the term's ``options`` and
    ``weight`` on top."""
    entry = yaml.safe_load((Path(CONFIG_DIR) / "loss" / f"{name}.yaml").read_text())[name]
    entry = {**entry, "term": {**entry["term"], **options}}
    return {name: entry if weight is None else {**entry, "weight": weight}}


def loss_of(config: dict, task: Task):
    return build_loss(config, task)


def only(name: str, task: Task, **options) -> torch.Tensor:
    logits, target = case(task)
    total, parts = loss_of(term(name, **options), task)(logits, target)
    assert torch.equal(total, parts[name])
    return total


def labelled_strip(logits: torch.Tensor, target: torch.Tensor):
    """The labelled pixels alone as a [1, C, V, 1] image: the reference for the ignore rule."""
    keep = target != IGNORE_INDEX
    return logits.movedim(1, 0)[:, keep][None, :, :, None], target[keep][None, :, None]


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
def test_region_losses_equal_smp_on_the_labelled_pixels_alone(name, task):
    logits, target = case(task)
    mode = "binary" if task.binary else "multiclass"
    options = {"alpha": 0.3, "beta": 0.7} if name == "tversky" else {}
    plain = type(SMP_REFERENCES[name](mode))(mode, **options)  # no ignore_index at all
    reference = plain(*labelled_strip(logits, target))
    assert only(name, task).item() == pytest.approx(reference.item(), rel=1e-5)
    assert SMP_REFERENCES[name](mode)(logits, target).item() == pytest.approx(
        reference.item(), rel=1e-5
    )


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
    total, _ = loss_of(term("bce"), BINARY)(torch.zeros(1, 1, 2, 2), target)
    assert total.item() == pytest.approx(math.log(2), rel=1e-6)
    # confident logits: predicted {a, b}, true {b, c} -> soft Dice = 1 - 2*1/(2+2) = 0.5
    logits = torch.tensor([[[[20.0, 20.0, -20.0, 20.0]]]])  # last pixel ignored
    target = torch.tensor([[[0, 1, 1, IGNORE_INDEX]]])
    total, _ = loss_of(term("dice"), BINARY)(logits, target)
    assert total.item() == pytest.approx(0.5, abs=1e-6)


def test_weighted_sum_combines_terms():
    logits, target = case(MULTI)
    loss = loss_of({**term("ce", weight=0.7), **term("dice", weight=0.3)}, MULTI)
    total, parts = loss(logits, target)
    assert total.item() == pytest.approx(0.7 * parts["ce"].item() + 0.3 * parts["dice"].item())
    assert loss_of({**term("ce"), "dice": None}, MULTI).terms.keys() == {"ce"}


def test_all_ignored_gives_zero_with_a_gradient():
    logits = torch.randn(1, 4, 3, 3, requires_grad=True)
    target = torch.full((1, 3, 3), IGNORE_INDEX)
    total, _ = loss_of({**term("ce"), **term("dice")}, MULTI)(logits, target)
    total.backward()
    assert total.item() == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


class ShapeRecorder(nn.Module):
    """A loss term that keeps the shapes it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple] = []

    def forward(self, logits, target):
        self.seen.append((tuple(logits.shape), tuple(target.shape), target.dtype))
        return logits.mean() * 0


def test_terms_get_the_batch_in_its_spatial_layout():
    loss = loss_of(
        {"shape": {"term": {"_target_": f"{__name__}.ShapeRecorder"}, "weight": 2.0}}, MULTI
    )
    logits, target = case(MULTI)
    loss(logits, target)
    assert loss.terms["shape"].seen == [((2, 4, 6, 7), (2, 6, 7), torch.long)]


@pytest.mark.parametrize(
    ("config", "task", "message"),
    [
        ({"cross_entropy": {"weight": 1.0}}, MULTI, "loss.cross_entropy must be .*term"),
        (term("bce"), MULTI, "loss=bce needs a binary task"),
        (term("dice", gama=2), BINARY, r"loss\.dice\.term .*gama"),
        (term("ce", class_weights=[1, 2]), BINARY, "class_weights need a multiclass task"),
        (term("ce", class_weights=[1, 2]), MULTI, "2 values for 4 classes"),
        ({}, BINARY, "no terms"),
        (
            {"x": {"term": {"_target_": "collections.OrderedDict"}}},
            BINARY,
            r"loss\.x\..* a torch Module",
        ),
    ],
)
def test_bad_loss_config_is_a_clear_error(config, task, message):
    with pytest.raises(LightsegError, match=message):
        build_loss(config, task)

"""Losses by name and their weighted sums, with one ignore convention (label 255).

Every term sees only the labelled pixels: ignored ones are dropped before the loss is computed,
so means, Dice sums and Lovasz orderings are over exactly the pixels that count.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from lightseg.errors import LightsegError
from lightseg.task import IGNORE_INDEX, Task


def labelled_pixels(
    logits: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, C, H, W] logits, [N, H, W] labels -> [1, C, V, 1], [1, V, 1] for the V kept pixels.

    Losses that sum over the batch (all those here) give the same value on this V x 1 "image"
    as on the masked batch.
    """
    keep = target != IGNORE_INDEX
    return logits.movedim(1, 0)[:, keep][None, :, :, None], target[keep][None, :, None]


class CrossEntropy(nn.Module):
    """Softmax cross-entropy; for a binary task (one logit), binary cross-entropy."""

    def __init__(
        self,
        task: Task,
        class_weights: list[float] | None = None,
        pos_weight: float | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.binary = task.binary
        if self.binary and class_weights is not None:
            raise LightsegError("loss: class_weights need a multiclass task; use pos_weight.")
        if not self.binary and pos_weight is not None:
            raise LightsegError("loss: pos_weight is for binary tasks; use class_weights.")
        weights = class_weights if class_weights is not None else pos_weight
        self.register_buffer("weights", None if weights is None else torch.tensor(weights))
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.binary:
            target = target.float().unsqueeze(1)
            if self.label_smoothing:
                target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
            return F.binary_cross_entropy_with_logits(logits, target, pos_weight=self.weights)
        return F.cross_entropy(
            logits, target, weight=self.weights, label_smoothing=self.label_smoothing
        )


def _binary_only(task: Task, **kwargs) -> nn.Module:
    if not task.binary:
        raise LightsegError(
            f"loss=bce needs a binary task, but the data has {task.num_classes} classes. "
            "Use loss=ce (or ce_dice)."
        )
    return CrossEntropy(task, **kwargs)


def _smp(loss_class: type[nn.Module]) -> Callable[..., nn.Module]:
    def build(task: Task, **kwargs) -> nn.Module:
        return loss_class(mode="binary" if task.binary else "multiclass", **kwargs)

    return build


#: name -> builder(task, **options). Options are the config keys besides ``weight``.
LOSSES: dict[str, Callable[..., nn.Module]] = {
    "ce": CrossEntropy,
    "bce": _binary_only,
    "dice": _smp(smp.losses.DiceLoss),
    "jaccard": _smp(smp.losses.JaccardLoss),
    "focal": _smp(smp.losses.FocalLoss),
    "lovasz": _smp(smp.losses.LovaszLoss),
    "tversky": _smp(smp.losses.TverskyLoss),
}


class SegmentationLoss(nn.Module):
    """A weighted sum of named terms; returns the total and each unweighted term."""

    def __init__(self, terms: Mapping[str, tuple[float, nn.Module]]) -> None:
        super().__init__()
        self.weights = {name: float(weight) for name, (weight, _) in terms.items()}
        self.terms = nn.ModuleDict({name: term for name, (_, term) in terms.items()})

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, target = labelled_pixels(logits.float(), target)
        if target.numel() == 0:  # every pixel ignored: no signal, but keep the graph
            zero = logits.sum() * 0.0
            return zero, {name: zero for name in self.terms}
        parts = {name: term(logits, target) for name, term in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, parts


def build_loss(config: Mapping[str, Mapping | None], task: Task) -> SegmentationLoss:
    """``{name: {weight: w, **options}}`` -> SegmentationLoss; a ``null`` entry drops a term."""
    terms = {}
    for name, options in config.items():
        if options is None:
            continue
        if name not in LOSSES:
            raise LightsegError(
                f"Unknown loss term 'loss.{name}'. Available: {', '.join(LOSSES)}; combine them "
                "as loss=[ce,dice] or set loss.<name>.weight."
            )
        options = dict(options)
        weight = options.pop("weight", 1.0)
        try:
            terms[name] = (weight, LOSSES[name](task, **options))
        except TypeError as error:
            raise LightsegError(f"Bad options for loss.{name}: {error}") from None
    if not terms:
        raise LightsegError("The loss config has no terms; choose one, e.g. loss=ce_dice.")
    return SegmentationLoss(terms)

"""Loss terms and their weighted sum (``loss.<name>: {weight, term: {_target_, ...}}``).

The loss-term contract: any ``nn.Module`` called as ``term(logits, target)`` with logits
``[N, C, H, W]`` (C = 1 for a binary task) and ``target`` a LongTensor ``[N, H, W]`` of class
indices in which :data:`IGNORE_INDEX` (255) marks pixels that must not count. No mask is
passed: ``target != 255`` is the valid-pixel mask. Terms see the batch in its spatial layout,
so boundary or topology terms work as written. lightseg fills in ``num_classes`` and
``ignore_index`` for constructors that take them. The built-in terms equal their value on the
labelled pixels alone (tests compare each against torch and smp references).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from lightseg.errors import LightsegError
from lightseg.task import IGNORE_INDEX, Task, build_named


class CrossEntropy(nn.Module):
    """Softmax cross-entropy; for a binary task (one logit), binary cross-entropy."""

    def __init__(
        self,
        num_classes: int,
        class_weights: list[float] | None = None,
        pos_weight: float | None = None,
        label_smoothing: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        self.binary, self.ignore_index = Task.of(num_classes).binary, int(ignore_index)
        if self.binary and class_weights is not None:
            raise LightsegError(
                "loss.ce.term.class_weights need a multiclass task; a binary one weighs its "
                "foreground with pos_weight (loss.ce.term.pos_weight=auto: from the training "
                "split)."
            )
        if not self.binary and pos_weight is not None:
            raise LightsegError("loss.ce.term.pos_weight is for binary tasks; use class_weights.")
        if class_weights is not None and len(class_weights) != num_classes:
            raise LightsegError(
                f"loss.ce.term.class_weights has {len(class_weights)} values for "
                f"{num_classes} classes."
            )
        weights = class_weights if class_weights is not None else pos_weight
        self.register_buffer("weights", None if weights is None else torch.tensor(weights))
        self.label_smoothing = float(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not self.binary:
            return F.cross_entropy(
                logits,
                target,
                weight=self.weights,
                ignore_index=self.ignore_index,
                label_smoothing=self.label_smoothing,
            )
        valid = target != self.ignore_index
        labels = (target == 1).to(logits.dtype)
        if self.label_smoothing:
            labels = labels * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        per_pixel = F.binary_cross_entropy_with_logits(
            logits[:, 0], labels, pos_weight=self.weights, reduction="none"
        )
        # the mean over the labelled pixels (NaN if none), without a host sync: no boolean
        # indexing; where(), not a product, so values at ignored pixels cannot leak
        return torch.where(valid, per_pixel, 0).sum() / valid.sum()


class BinaryCrossEntropy(CrossEntropy):
    """Binary cross-entropy; refuses multiclass tasks (use :class:`CrossEntropy` there)."""

    def __init__(self, num_classes: int, **options) -> None:
        if not Task.of(num_classes).binary:
            raise LightsegError(
                f"loss=bce needs a binary task, but the data has {num_classes} classes. "
                "Use loss=ce (or ce_dice)."
            )
        super().__init__(num_classes, **options)


class SMPTerm(nn.Module):
    """An smp loss (a subclass names its class) in binary or multiclass mode with lightseg's
    ignore label; every option is passed to it (``loss.focal.gamma``)."""

    smp_loss: type[nn.Module]

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, **options) -> None:
        super().__init__()
        mode = "binary" if Task.of(num_classes).binary else "multiclass"
        self.loss = self.smp_loss(mode=mode, ignore_index=ignore_index, **options)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(logits, target)


class Dice(SMPTerm):
    smp_loss = smp.losses.DiceLoss


class Jaccard(SMPTerm):
    smp_loss = smp.losses.JaccardLoss


class Focal(SMPTerm):
    smp_loss = smp.losses.FocalLoss


class Lovasz(SMPTerm):
    smp_loss = smp.losses.LovaszLoss


class Tversky(SMPTerm):
    smp_loss = smp.losses.TverskyLoss


class SegmentationLoss(nn.Module):
    """A weighted sum of named terms; returns the total and each unweighted term."""

    def __init__(self, weights: Mapping[str, float], terms: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.weights, self.terms = dict(weights), nn.ModuleDict(terms)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = logits.float()  # losses in float32, also under mixed precision
        if not bool((target != IGNORE_INDEX).any()):  # no signal, but keep the graph
            zero = logits.sum() * 0.0
            return zero, {name: zero for name in self.terms}
        parts = {name: term(logits, target) for name, term in self.terms.items()}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, parts


def loss_terms(
    config: Mapping[str, Any] | None,
) -> tuple[dict[str, float], dict[str, dict[str, Any]]]:
    """The ``loss`` config's weights and term configs by name, its shape checked (cheap: the
    experiment checks it before reading any data); ``null`` entries are left out."""
    weights, terms = {}, {}
    for name, entry in (config or {}).items():
        if entry is None:
            continue
        entry = dict(entry) if isinstance(entry, Mapping) else {}
        unknown = sorted(set(entry) - {"weight", "term"})
        options = dict(entry.get("term") or {})
        weight = entry.get("weight", 1.0)
        if unknown or "_target_" not in options or not isinstance(weight, int | float):
            raise LightsegError(
                f"loss.{name} must be {{weight: <number>, term: {{_target_: <class>, ...}}}}"
                + (f", not have {', '.join(unknown)}" if unknown else "")
                + f": e.g. loss.{name}.term._target_=lightseg.losses.Dice (configs/loss/*.yaml "
                "show the built-in ones; a term's options go under term)."
            )
        weights[name], terms[name] = float(weight), options
    if not terms:
        raise LightsegError("The loss config has no terms; choose one, e.g. loss=ce_dice.")
    return weights, terms


def build_loss(config: Mapping[str, Mapping[str, Any] | None], task: Task) -> SegmentationLoss:
    """``{name: {weight, term: {_target_, **options}}}`` -> SegmentationLoss (null drops one)."""
    weights, terms = loss_terms(config)
    built = build_named("loss", terms, task, nn.Module, "lightseg.losses.Dice", ".term")
    return SegmentationLoss(weights, built)

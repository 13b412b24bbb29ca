"""Pixel-level calibration: expected calibration error (ECE) and Brier score, in constant memory.

torchmetrics' ``CalibrationError`` keeps every pixel's confidence until ``compute()``: gigabytes
over a split of full-size images. :class:`PixelCalibration` keeps per confidence bin only the
pixel count, confidence sum and number correct (sum states, so processes sync by adding), plus
the Brier sum. Its ECE equals ``MulticlassCalibrationError(n_bins, norm="l1")`` except that a
confidence of exactly 1 falls in the last bin, not a bin of its own.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from lightseg.task import IGNORE_INDEX


class PixelCalibration(Metric):
    """ECE and Brier score of probabilities ``[N, C, H, W]`` (binary tasks as
    ``Task.probabilities`` gives them) against class indices ``[N, H, W]``, ``ignore_index``
    pixels left out; NaN when none is labelled. ``brier`` sums (p_c - onehot_c)^2 over all C
    classes (Brier's original score, 0..2; for a binary task twice the common one)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self, num_classes: int, n_bins: int = 15, ignore_index: int = IGNORE_INDEX, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        self.num_classes, self.n_bins, self.ignore_index = num_classes, n_bins, ignore_index
        for name in ("count", "confidence", "correct"):  # per bin
            self.add_state(name, torch.zeros(self.n_bins, dtype=torch.float64), "sum")
        self.add_state("brier_sum", torch.zeros((), dtype=torch.float64), "sum")

    def update(self, probabilities: torch.Tensor, target: torch.Tensor) -> None:
        labelled = target != self.ignore_index
        labels = torch.where(labelled, target, 0).long()  # [N, H, W]
        # per pixel, without a [pixels, C] copy: a test batch of COCO would take gigabytes
        confidence, predicted = probabilities.max(dim=1)
        mine = probabilities.gather(1, labels[:, None])[:, 0]  # p of the true class
        squares = torch.linalg.vector_norm(probabilities, dim=1) ** 2
        confidence, correct = confidence[labelled], (predicted == labels)[labelled]
        # torchmetrics' edges: linspace in the confidences' dtype, right-closed bucketize
        edges = torch.linspace(0, 1, self.n_bins + 1, dtype=confidence.dtype, device=labels.device)
        bins = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, self.n_bins - 1)
        self.count.index_add_(0, bins, torch.ones_like(confidence, dtype=torch.float64))
        self.confidence.index_add_(0, bins, confidence.double())
        self.correct.index_add_(0, bins, correct.double())
        # sum_c (p_c - onehot_c)^2 = sum_c p_c^2 - 2 p_label + 1
        self.brier_sum += (squares.double() - 2 * mine.double() + 1)[labelled].sum()

    def bins(self) -> dict[str, torch.Tensor]:
        """Per bin: ``count``, mean ``confidence`` and ``accuracy`` (NaN in empty bins), and the
        ``edges`` [n_bins + 1]: a reliability diagram's data."""
        count = self.count.clamp(min=1)
        empty = self.count == 0
        return {
            "count": self.count,
            "confidence": torch.where(empty, torch.nan, self.confidence / count),
            "accuracy": torch.where(empty, torch.nan, self.correct / count),
            "edges": torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64),
        }

    def compute(self) -> dict[str, torch.Tensor]:
        total = self.count.sum()
        if total == 0:
            return {"ece": torch.tensor(torch.nan), "brier": torch.tensor(torch.nan)}
        gap = (self.correct - self.confidence).abs()  # count * |accuracy - mean confidence|
        return {"ece": gap.sum() / total, "brier": self.brier_sum / total}

"""Pixel-level calibration: expected calibration error (ECE) and Brier score from per-pixel class
probabilities, in constant memory.

torchmetrics' ``CalibrationError`` keeps every pixel's confidence until ``compute()``: over a
split of full-size images that is gigabytes. :class:`PixelCalibration` keeps what ECE needs
instead, per confidence bin: the pixel count, the sum of confidences and the number correct (sum
states, so processes sync by adding them), plus the Brier sum. Its ECE equals torchmetrics'
``MulticlassCalibrationError(n_bins, norm="l1")`` (top-label confidence, equal-width bins, the
same bin edges), except that a confidence of exactly 1 falls in the last bin rather than in a
bin of its own (the usual closed last bin [1 - 1/n_bins, 1]).
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from lightseg.task import IGNORE_INDEX


class PixelCalibration(Metric):
    """ECE and Brier score of probabilities ``[N, C, H, W]`` (each pixel summing to 1 over the
    task's C classes; binary tasks as ``Task.probabilities`` gives them: background,
    foreground) against class indices ``[N, H, W]``; pixels labelled ``ignore_index`` are left
    out. ``compute()`` returns ``{"ece": ..., "brier": ...}``:

    * ``ece``: sum over bins of (pixels in bin / pixels) * |accuracy - mean confidence|, where a
      pixel's confidence is its largest class probability and it is correct if that class is
      its label (L1, as torchmetrics' ``norm="l1"``);
    * ``brier``: the mean over labelled pixels of sum_c (p_c - onehot_c)^2, summed over all C
      classes (Brier's original multi-category score, 0..2); for a binary task that is twice the
      common (p_foreground - y)^2.

    Both are NaN when no pixel was labelled."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(
        self, num_classes: int, n_bins: int = 15, ignore_index: int = IGNORE_INDEX, **kwargs
    ) -> None:
        super().__init__(**kwargs)
        if int(n_bins) < 1:
            raise ValueError(f"n_bins={n_bins} must be at least 1")
        self.num_classes, self.n_bins, self.ignore_index = (
            int(num_classes),
            int(n_bins),
            ignore_index,
        )
        for name in ("count", "confidence", "correct"):  # per bin
            self.add_state(name, torch.zeros(self.n_bins, dtype=torch.float64), "sum")
        self.add_state("brier_sum", torch.zeros((), dtype=torch.float64), "sum")

    def update(self, probabilities: torch.Tensor, target: torch.Tensor) -> None:
        if probabilities.dim() != 4 or probabilities.shape[1] != self.num_classes:
            raise ValueError(
                f"expected probabilities [N, {self.num_classes}, H, W], got "
                f"{list(probabilities.shape)}"
            )
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

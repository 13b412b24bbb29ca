"""What kind of segmentation task a class list implies, decided here and nowhere else."""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: Label value that marks pixels excluded from losses and metrics (VOC borders, COCO crowds).
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Task:
    """Two classes make a binary task (one logit, sigmoid); more make a multiclass one (softmax)."""

    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ValueError(f"a segmentation task needs at least 2 classes, got {self.classes}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @property
    def out_channels(self) -> int:
        return 1 if self.binary else self.num_classes

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities [N, C, H, W]; binary tasks get (background, foreground)."""
        if self.binary:
            foreground = logits.float().sigmoid()
            return torch.cat([1 - foreground, foreground], dim=1)
        return logits.float().softmax(dim=1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Class indices [N, H, W] from logits [N, out_channels, H, W]."""
        if self.binary:
            return (logits[:, 0] > 0).long()
        return logits.argmax(dim=1)

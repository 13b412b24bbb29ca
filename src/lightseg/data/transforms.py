"""albumentations pipelines from config, ending in tensors; normalisation on the device.

Workers keep 8-bit images ``uint8`` (a quarter of float32's bytes to copy); :class:`Normalize`
on the device is the one input scaling that training, evaluation, prediction and export share.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2
from torch import nn

from lightseg.errors import LightsegError
from lightseg.utils.signals import worker_init

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Transforms the pipeline adds or the device does; listing them in the config would apply twice.
NOT_IN_CONFIG = (A.Normalize, ToTensorV2)


def build_pipeline(transforms: Sequence[A.BasicTransform]) -> A.Compose:
    """``data.transforms.train`` / ``.eval`` (image and mask together), then to tensors."""
    for transform in transforms:
        if isinstance(transform, NOT_IN_CONFIG):
            raise LightsegError(
                f"data.transforms lists {type(transform).__name__}, which lightseg applies itself: "
                "pipelines end in tensors and the model normalises them on its device with "
                "data.mean and data.std. Remove it from data.transforms (set data.mean/data.std "
                "for another normalisation)."
            )
    return A.Compose([*transforms, ToTensorV2()])


def pixel_scale(dtype: np.dtype | torch.dtype) -> float:
    """The value that stands for full intensity: 255 (uint8), 65535 (uint16), 1.0 (float)."""
    if isinstance(dtype, torch.dtype):
        return 1.0 if dtype.is_floating_point else float(torch.iinfo(dtype).max)
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


def to_unit_range(image: torch.Tensor) -> torch.Tensor:
    """uint8 images as they are (:class:`Normalize` divides by 255 on the device), any other
    pixel type as float32 in [0, 1]."""
    if image.dtype == torch.uint8:
        return image
    return image.float() / pixel_scale(image.dtype)


def one_opencv_thread() -> None:
    """One OpenCV thread here and in loader workers (the parallelism); set before they fork,
    since a forked child that changes it hangs on the parent's pool."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def init_loader_worker(worker_id: int) -> None:
    """One OpenCV thread, then :func:`lightseg.utils.signals.worker_init`."""
    one_opencv_thread()
    worker_init(worker_id)


class Normalize(nn.Module):
    """``(pixels / 255 - mean) / std`` of uint8 ``[N, C, H, W]``, or of floats in 0..1, then
    clamped to ``[-clip, clip]`` if given (robust scaling: outliers beyond the percentiles that
    mean/std map to -1..1 cannot set the scale); hyperparameters, not ``state_dict`` entries."""

    def __init__(
        self, mean: Sequence[float], std: Sequence[float], clip: float | None = None
    ) -> None:
        super().__init__()
        self.clip = clip
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scaled = images.float() / 255 if images.dtype == torch.uint8 else images
        normalized = (scaled - self.mean) / self.std
        return normalized if self.clip is None else normalized.clamp(-self.clip, self.clip)


class ShrinkToFit(A.LongestMaxSize):
    """Scale down to fit within ``max_size_hw``, never up: with a ``PadIfNeeded`` after it,
    images of any size batch together and those that fit keep their own pixels."""

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        return {"scale": min(1.0, super().get_params_dependent_on_data(params, data)["scale"])}

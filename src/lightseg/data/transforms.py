"""albumentations pipelines from config, ending in tensors; normalisation on the device.

Loader workers only decode (or read the cache), augment and convert to tensors: 8-bit images
stay ``uint8`` (a quarter of float32's bytes to copy between processes and to the GPU); 16-bit
and float images become float32 in [0, 1] (:func:`to_unit_range`). The model turns either into
normalised floats on its device with :class:`Normalize`, which training, evaluation, prediction
and export share, so there is one definition of the input scaling.
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
    """Apply ``transforms`` (image and mask together), then convert to tensors.

    ``transforms`` come instantiated from ``data.transforms.train`` / ``.eval`` in the config;
    geometric ones move the mask with the image (nearest-neighbour), pads fill masks with 255.
    The image keeps its pixel type; :func:`to_unit_range` and :class:`Normalize` scale it.
    """
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
    """uint8 images as they are (:class:`Normalize` divides by 255 on the device); any other
    pixel type as float32 in [0, 1], scaled by its range (16-bit: 65535) as 8-bit ones are."""
    if image.dtype == torch.uint8:
        return image
    return image.float() / pixel_scale(image.dtype)


def one_opencv_thread() -> None:
    """Run OpenCV on one thread in this process and the loader workers it starts.

    The workers are the parallelism: OpenCV's own thread pool in each of them would only
    contend for the same cores (one thread halves the time per sample on a busy machine).
    Set in the parent before workers fork, because a forked child that changes OpenCV's
    thread count waits forever on the parent's pool; a spawned worker sets it itself.
    """
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)


def init_loader_worker(worker_id: int) -> None:
    """Loader workers: one OpenCV thread, stop signals left to the main process and
    Lightning's worker seeding (:func:`lightseg.utils.signals.worker_init`)."""
    one_opencv_thread()
    worker_init(worker_id)


class Normalize(nn.Module):
    """``(pixels / 255 - mean) / std`` on whatever device the images are on.

    Takes uint8 images ``[N, C, H, W]`` in 0..255 (what loaders deliver for 8-bit data) or
    float images already scaled to 0..1 (16-bit data, and what exported models take). Mean and
    std are not saved in ``state_dict``: checkpoints keep them as hyperparameters.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        shape = (1, len(mean), 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scaled = images.float() / 255 if images.dtype == torch.uint8 else images
        return (scaled - self.mean) / self.std


class ShrinkToFit(A.LongestMaxSize):
    """Scale down, keeping the aspect ratio, to fit within ``max_size_hw``; never enlarge.

    Evaluation pipelines follow it with a ``PadIfNeeded`` to a fixed size (mask fill 255), so
    images of any size batch together while those that already fit keep their own pixels.
    """

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        return {"scale": min(1.0, super().get_params_dependent_on_data(params, data)["scale"])}

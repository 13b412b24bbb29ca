"""albumentations pipelines from config: the listed transforms, then normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_pipeline(
    transforms: Sequence[A.BasicTransform], mean: Sequence[float], std: Sequence[float]
) -> A.Compose:
    """Apply ``transforms`` (image and mask together), then normalise and convert to tensors.

    ``transforms`` come instantiated from ``data.transforms.train`` / ``.eval`` in the config;
    geometric ones move the mask with the image (nearest-neighbour), pads fill masks with 255.
    Pixels are scaled to [0, 1] by their type's range (:func:`pixel_scale`: 8-bit and 16-bit
    images alike) before ``(x - mean) / std``, so mean and std are in that unit.
    """
    return A.Compose(
        [
            *transforms,
            A.ToFloat(),
            A.Normalize(mean=mean, std=std, max_pixel_value=1.0),
            ToTensorV2(),
        ]
    )


def pixel_scale(dtype: np.dtype) -> float:
    """The value that stands for full intensity: 255 (uint8), 65535 (uint16), 1.0 (float)."""
    dtype = np.dtype(dtype)
    return float(np.iinfo(dtype).max) if np.issubdtype(dtype, np.integer) else 1.0


class ShrinkToFit(A.LongestMaxSize):
    """Scale down, keeping the aspect ratio, to fit within ``max_size_hw``; never enlarge.

    Evaluation pipelines follow it with a ``PadIfNeeded`` to a fixed size (mask fill 255), so
    images of any size batch together while those that already fit keep their own pixels.
    """

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        return {"scale": min(1.0, super().get_params_dependent_on_data(params, data)["scale"])}

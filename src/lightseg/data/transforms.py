"""albumentations pipelines from config: the listed transforms, then normalisation."""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
from albumentations.pytorch import ToTensorV2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_pipeline(
    transforms: Sequence[A.BasicTransform], mean: Sequence[float], std: Sequence[float]
) -> A.Compose:
    """Apply ``transforms`` (image and mask together), then normalise and convert to tensors.

    ``transforms`` come instantiated from ``data.transforms.train`` / ``.eval`` in the config;
    geometric ones move the mask with the image (nearest-neighbour), pads fill masks with 255.
    """
    return A.Compose([*transforms, A.Normalize(mean=mean, std=std), ToTensorV2()])


class ShrinkToFit(A.LongestMaxSize):
    """Scale down, keeping the aspect ratio, to fit within ``max_size_hw``; never enlarge.

    Evaluation pipelines follow it with a ``PadIfNeeded`` to a fixed size (mask fill 255), so
    images of any size batch together while those that already fit keep their own pixels.
    """

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        return {"scale": min(1.0, super().get_params_dependent_on_data(params, data)["scale"])}

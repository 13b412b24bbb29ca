"""Portrait effects from a person model's foreground probability: ``background`` (the person
over a colour or a picture) and ``color-splash`` (the rest in grey). The image is blended with
the backdrop by the probability blurred by ``feather`` px, or with a ``threshold`` by the hard
mask with a feathered edge, so that a low background probability never shows the old one.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from lightseg.errors import LightsegError

EFFECTS = ("background", "color-splash")

#: A backdrop: an RGB colour, or a picture (uint8 [h, w, 3], resized to the image).
Backdrop = Sequence[int] | np.ndarray


def soft_alpha(probability: np.ndarray, feather: float = 3.0) -> np.ndarray:
    """Foreground weight in [0, 1], float32 [H, W]: the probability blurred by ``feather`` px."""
    alpha = np.clip(np.asarray(probability, dtype=np.float32), 0.0, 1.0)
    if feather > 0:
        alpha = cv2.GaussianBlur(alpha, ksize=(0, 0), sigmaX=float(feather))
    return alpha


def hard_alpha(probability: np.ndarray, threshold: float, feather: float = 3.0) -> np.ndarray:
    """Foreground weight in [0, 1], float32 [H, W]: 1 where ``probability >= threshold``, ramping
    linearly to 0 across the mask edge; exactly 0 (1) farther than ``feather`` px outside
    (inside) it. The edge lies half a pixel from the centres of the pixels on either side."""
    mask = (np.asarray(probability) >= threshold).astype(np.uint8)
    if feather <= 0:
        return mask.astype(np.float32)
    inside = cv2.distanceTransform(mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    outside = cv2.distanceTransform(1 - mask, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    to_edge = np.where(mask == 1, inside - 0.5, 0.5 - outside)  # > 0 inside the mask
    return np.clip(0.5 + to_edge / (2 * float(feather)), 0.0, 1.0).astype(np.float32)


def background_pixels(background: Backdrop, size_hw: tuple[int, int]) -> np.ndarray:
    """A uint8 [H, W, 3] backdrop: an RGB colour, or a picture resized to ``size_hw``."""
    height, width = size_hw
    if isinstance(background, np.ndarray) and background.ndim == 3:
        return cv2.resize(background, (width, height), interpolation=cv2.INTER_LINEAR)
    try:
        colour = [int(c) for c in background]
    except (TypeError, ValueError):  # not a list of numbers
        colour = []
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise LightsegError(f"background={background} must be an RGB colour, 3 values in 0..255.")
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3))


def apply_effect(
    name: str,
    image: np.ndarray,
    probability: np.ndarray,
    background: Backdrop = (0, 177, 64),
    feather: float = 3.0,
    threshold: float | None = None,
) -> np.ndarray:
    """The effect ``name`` (one of ``EFFECTS``) on ``image`` (uint8 RGB)."""
    if name == "background":
        backdrop = background_pixels(background, image.shape[:2])
    elif name == "color-splash":
        grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        backdrop = np.repeat(grey[..., None], 3, axis=2)
    else:
        raise LightsegError(f"Unknown effect '{name}'. Available: {', '.join(EFFECTS)}.")
    if threshold is None:
        weight = soft_alpha(probability, feather)[..., None]
    else:
        weight = hard_alpha(probability, threshold, feather)[..., None]
    mixed = weight * image.astype(np.float32) + (1 - weight) * backdrop.astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def replace_background(
    image: np.ndarray,
    probability: np.ndarray,
    background: Backdrop = (0, 177, 64),
    feather: float = 3.0,
    threshold: float | None = None,
) -> np.ndarray:
    """The foreground of ``image`` (uint8 RGB) over a colour or a picture."""
    return apply_effect("background", image, probability, background, feather, threshold)


def color_splash(
    image: np.ndarray, probability: np.ndarray, feather: float = 3.0, threshold: float | None = None
) -> np.ndarray:
    """The foreground of ``image`` in colour, everything else in grey."""
    return apply_effect("color-splash", image, probability, feather=feather, threshold=threshold)

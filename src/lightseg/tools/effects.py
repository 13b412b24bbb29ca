"""Portrait effects from a binary (person) model's foreground probability.

``background``: the person over a colour or another picture; ``color-splash``: the person in
colour, the rest in grey. Both blend with a soft alpha (the probability, feathered with a
Gaussian blur), so edges look natural rather than cut out.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lightseg.errors import LightsegError

EFFECTS = ("background", "color-splash")


def soft_alpha(probability: np.ndarray, feather: float = 3.0) -> np.ndarray:
    """Foreground weight in [0, 1], float32 [H, W]: the probability blurred by ``feather`` px."""
    alpha = np.clip(np.asarray(probability, dtype=np.float32), 0.0, 1.0)
    if feather > 0:
        alpha = cv2.GaussianBlur(alpha, ksize=(0, 0), sigmaX=float(feather))
    return alpha


def blend(foreground: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``alpha * foreground + (1 - alpha) * background`` as uint8 [H, W, 3]."""
    weight = alpha[..., None]
    mixed = weight * foreground.astype(np.float32) + (1 - weight) * background.astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def background_pixels(background: str | Path | Sequence[int], size_hw: tuple[int, int]):
    """A uint8 [H, W, 3] backdrop: an RGB colour, or an image file resized to ``size_hw``."""
    height, width = size_hw
    if isinstance(background, (str, Path)):
        path = Path(background)
        if not path.is_file():
            raise LightsegError(
                f"background='{background}' is neither an RGB colour like [0,255,0] nor an "
                "existing image file."
            )
        picture = Image.open(path).convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(picture)
    colour = [int(c) for c in background]
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise LightsegError(f"background={colour} must be an RGB colour, 3 values in 0..255.")
    return np.broadcast_to(np.array(colour, np.uint8), (height, width, 3))


def replace_background(
    image: np.ndarray,
    probability: np.ndarray,
    background: str | Path | Sequence[int] = (0, 177, 64),
    feather: float = 3.0,
) -> np.ndarray:
    """The foreground of ``image`` (uint8 RGB) over a colour or a picture."""
    backdrop = background_pixels(background, image.shape[:2])
    return blend(image, backdrop, soft_alpha(probability, feather))


def color_splash(image: np.ndarray, probability: np.ndarray, feather: float = 3.0) -> np.ndarray:
    """The foreground of ``image`` in colour, everything else in grey."""
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    return blend(image, np.repeat(grey[..., None], 3, axis=2), soft_alpha(probability, feather))


def apply_effect(
    name: str,
    image: np.ndarray,
    probability: np.ndarray,
    background: str | Path | Sequence[int] = (0, 177, 64),
    feather: float = 3.0,
) -> np.ndarray:
    """Apply the effect ``name`` (one of ``EFFECTS``)."""
    if name == "background":
        return replace_background(image, probability, background, feather)
    if name == "color-splash":
        return color_splash(image, probability, feather)
    raise LightsegError(f"Unknown effect '{name}'. Available: {', '.join(EFFECTS)}.")

"""The fully connected CRF (Krähenbühl & Koltun 2011) on class probabilities, as DeepLab v1/v2
applied it: a smoothness and an appearance kernel, by ``pydensecrf2`` (``pip install -e '.[crf]'``).
"""

from __future__ import annotations

import inspect

import numpy as np

from lightseg.errors import LightsegError


def _densecrf():
    try:
        import pydensecrf.densecrf as densecrf
    except ImportError:
        raise LightsegError(
            "postprocess=crf needs the optional dense-CRF package: pip install -e '.[crf]' "
            "(it installs pydensecrf2, compiled from source: needs a C++ compiler), or run "
            "without post-processing."
        ) from None
    return densecrf


def dense_crf(
    image: np.ndarray,
    probabilities: np.ndarray,
    iterations: int = 10,
    gaussian_sxy: float = 1,
    gaussian_compat: float = 3,
    bilateral_sxy: float = 67,
    bilateral_srgb: float = 3,
    bilateral_compat: float = 4,
) -> np.ndarray:
    """Refine ``probabilities`` [C, H, W] (summing to 1 over C) with the colours of ``image``,
    uint8 [H, W, 3] RGB; returns float32 [C, H, W]. Defaults: DeepLab v2 (ResNet-101) on VOC."""
    densecrf = _densecrf()
    probabilities, image = np.asarray(probabilities, dtype=np.float32), np.asarray(image)
    if probabilities.ndim != 3 or probabilities.shape[0] < 2:
        raise LightsegError(
            f"dense_crf needs probabilities [C, H, W] with C >= 2, got {probabilities.shape}."
        )
    classes, height, width = probabilities.shape
    if image.dtype != np.uint8 or image.shape != (height, width, 3):
        raise LightsegError(
            f"dense_crf needs the uint8 RGB image [H, W, 3] = [{height}, {width}, 3] that the "
            f"probabilities belong to, got {image.dtype} {list(image.shape)}."
        )
    crf = densecrf.DenseCRF2D(width, height, classes)
    unary = -np.log(np.clip(probabilities, 1e-8, 1.0))  # clipped: certain zeros stay finite
    crf.setUnaryEnergy(np.ascontiguousarray(unary.reshape(classes, -1)))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=bilateral_sxy,
        srgb=bilateral_srgb,
        rgbim=np.require(image, np.uint8, ["C", "W"]),  # pydensecrf needs a writable buffer
        compat=bilateral_compat,
    )
    return np.asarray(crf.inference(int(iterations)), np.float32).reshape(classes, height, width)


#: The kernel and inference parameters ``dense_crf`` takes besides its inputs.
CRF_PARAMS = set(inspect.signature(dense_crf).parameters) - {"image", "probabilities"}


class DenseCRF:
    """``dense_crf`` with fixed parameters (``instantiate(cfg.postprocess)``), checked with the
    CRF package on creation, so a run fails before it evaluates anything."""

    def __init__(self, **params: float) -> None:
        if unknown := sorted(set(params) - CRF_PARAMS):
            raise LightsegError(
                f"Unknown dense-CRF parameter(s) {unknown} in the postprocess config; "
                f"available: {', '.join(sorted(CRF_PARAMS))}."
            )
        _densecrf()
        self.params = params

    def __call__(self, image: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        return dense_crf(image, probabilities, **self.params)

"""Dense CRF post-processing: it snaps a blurred boundary to the colour edge."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lightseg import CONFIG_DIR
from lightseg.errors import LightsegError
from lightseg.tools.postprocess import CRF_PARAMS, DenseCRF, dense_crf

SIZE, EDGE = 48, 24  # a red left half and a blue right half: the object is columns 24..47


def edge_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image with a sharp colour edge, its truth, and unaries blurred and shifted 5.5 px left."""
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[:, :EDGE] = (200, 40, 40)
    image[:, EDGE:] = (40, 40, 200)
    truth = np.zeros((SIZE, SIZE), np.int64)
    truth[:, EDGE:] = 1
    foreground = 1 / (1 + np.exp(-(np.arange(SIZE) - 18.5) / 4))  # 0.5 between columns 18, 19
    probabilities = np.stack([1 - foreground, foreground])[:, None, :].repeat(SIZE, axis=1)
    return image, truth, probabilities.astype(np.float32)


def foreground_iou(probabilities: np.ndarray, truth: np.ndarray) -> float:
    predicted = probabilities.argmax(0) == 1
    return (predicted & (truth == 1)).sum() / (predicted | (truth == 1)).sum()


def test_crf_raises_iou_on_a_sharp_colour_edge():
    pytest.importorskip("pydensecrf.densecrf")
    image, truth, probabilities = edge_case()
    # before: columns 19..47 predicted -> IoU = 24 / 29
    assert foreground_iou(probabilities, truth) == pytest.approx(24 / 29)
    refined = dense_crf(image, probabilities)
    assert refined.shape == (2, SIZE, SIZE) and refined.dtype == np.float32
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)
    assert foreground_iou(refined, truth) == 1.0
    # the appearance (colour) kernel does it: position smoothing alone leaves the boundary
    smooth_only = dense_crf(image, probabilities, bilateral_compat=0)
    assert foreground_iou(smooth_only, truth) == pytest.approx(24 / 29)


def test_crf_config_instantiates_the_documented_defaults():
    pytest.importorskip("pydensecrf.densecrf")
    cfg = OmegaConf.load(Path(CONFIG_DIR) / "postprocess" / "crf.yaml")
    crf = instantiate(cfg)
    assert isinstance(crf, DenseCRF)
    defaults = {
        "iterations": 10,
        "gaussian_sxy": 1,
        "gaussian_compat": 3,
        "bilateral_sxy": 67,
        "bilateral_srgb": 3,
        "bilateral_compat": 4,
    }
    assert crf.params == defaults and set(defaults) == CRF_PARAMS
    image, truth, probabilities = edge_case()
    assert foreground_iou(crf(image, probabilities), truth) == 1.0


def test_missing_crf_package_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(LightsegError, match=r"pip install -e '\.\[crf\]'"):
        DenseCRF(iterations=5)
    image, _, probabilities = edge_case()
    with pytest.raises(LightsegError, match="pydensecrf2"):
        dense_crf(image, probabilities)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda image, p: (image.astype(np.float32), p), "uint8 RGB image"),
        (lambda image, p: (image[:-1], p), r"\[48, 48, 3\]"),
        (lambda image, p: (image, p[:1]), "C >= 2"),
        (lambda image, p: (image, p[0]), "C >= 2"),
    ],
)
def test_bad_crf_inputs_raise_lightseg_error(change, message):
    pytest.importorskip("pydensecrf.densecrf")
    image, _, probabilities = edge_case()
    with pytest.raises(LightsegError, match=message):
        dense_crf(*change(image, probabilities))


def test_unknown_crf_parameter_is_named():
    with pytest.raises(LightsegError, match=r"\['bilateral_rgb'\].*bilateral_srgb"):
        DenseCRF(bilateral_rgb=3)

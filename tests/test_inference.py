"""Rebuilding models from checkpoints, and whole-image, sliding-window and TTA inference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from lightseg import CONFIG_DIR
from lightseg.checkpoints import load_module
from lightseg.errors import LightsegError
from lightseg.experiment import inference_defaults
from lightseg.models import SegmentationModule
from lightseg.tools.eval import evaluate
from lightseg.tools.inference import Segmenter, build_segmenter, gaussian_weights
from tests.conftest import CE_DICE, make_config, metrics_for

SMP = "lightseg.models.smp_models.build"


def pointwise_module(classes=("background", "a", "b"), kernel: int = 1) -> SegmentationModule:
    """A module whose network is one convolution: pointwise (kernel 1) has no spatial context."""
    module = SegmentationModule(
        model={"_target_": SMP, "encoder_name": "resnet18", "encoder_weights": None},
        loss=CE_DICE,
        metrics=metrics_for(classes),
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        classes=list(classes),
        normalization={"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        inference={"image_size": [64, 64], "mode": "whole"},
    )
    torch.manual_seed(0)
    module.net = nn.Conv2d(3, module.task.out_channels, kernel, padding=kernel // 2)
    module.net.input_multiple = 32  # like the smp encoders these tests stand in for
    return module.eval()


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_inference_defaults_follow_the_eval_pipeline(tmp_path):
    resize = make_config(tmp_path, "experiment=ph2_unet")
    pad = make_config(tmp_path, "experiment=voc_deeplabv3plus")
    assert inference_defaults(resize.data) == {"image_size": [256, 256], "mode": "whole"}
    assert inference_defaults(pad.data)["mode"] == "slide"


def test_slide_equals_whole_when_the_window_covers_the_image(demo_checkpoint):
    module = load_module(demo_checkpoint)
    image = random_image(64, 64)
    whole = Segmenter(module, mode="whole")(image)
    slide = Segmenter(module, mode="slide")(image)
    assert whole.shape == (2, 64, 64)
    np.testing.assert_array_equal(whole, slide)


def test_overlapping_windows_average_to_the_full_image_output():
    module = pointwise_module()  # pointwise: the same at any scale, so check_scale=False
    image = random_image(100, 150)
    slide = Segmenter(
        module, image_size=(64, 64), mode="slide", stride=(32, 48), check_scale=False
    )(image)
    full = module.task.probabilities(module.net(Segmenter(module).normalize(image)))[0]
    assert slide.shape == (3, 100, 150)
    np.testing.assert_allclose(slide, full.detach().numpy(), atol=1e-6)
    small = Segmenter(module, image_size=(64, 64), mode="slide", check_scale=False)(
        random_image(40, 50)
    )
    assert small.shape == (3, 40, 50)  # smaller than a window: padded, then cropped back


def test_flip_tta_of_a_flip_equivariant_model_changes_nothing():
    equivariant = pointwise_module()
    image = random_image(64, 64)
    plain = Segmenter(equivariant)(image)
    np.testing.assert_allclose(Segmenter(equivariant, flip=True)(image), plain, atol=1e-6)
    one_sided = pointwise_module(kernel=3)  # a 3x3 kernel is not mirror-symmetric
    assert not np.allclose(Segmenter(one_sided, flip=True)(image), Segmenter(one_sided)(image))


def test_multi_scale_tta_averages_the_probabilities_of_each_scale():
    module = pointwise_module(kernel=3)
    image = random_image(70, 90)
    both = Segmenter(module, scales=(0.5, 1.0))(image)
    half, one = Segmenter(module, scales=(0.5,))(image), Segmenter(module)(image)
    np.testing.assert_allclose(both, (half + one) / 2, atol=1e-6)
    np.testing.assert_allclose(both.sum(0), 1.0, atol=1e-5)


def test_bad_inference_options_are_named():
    module = pointwise_module()
    with pytest.raises(LightsegError, match=r"inference\.mode"):
        Segmenter(module, mode="tiles")
    with pytest.raises(LightsegError, match="multiples of 32"):
        Segmenter(module, image_size=(50, 64))
    with pytest.raises(LightsegError, match=r"inference\.stride"):
        Segmenter(module, mode="slide", stride=(100, 10))
    with pytest.raises(LightsegError, match="Unknown inference option"):
        build_segmenter(module, {"mode": "auto", "flipp": True})
    assert build_segmenter(module, {"mode": "auto", "image_size": None}).mode == "whole"


# --- a mode that shows the model a scale it never saw ----------------------------------------


def test_slide_on_a_model_trained_on_resized_whole_images_is_refused_with_the_fix():
    module = pointwise_module()  # trained on whole images resized to 64x64
    image = random_image(192, 256)
    with pytest.raises(LightsegError) as error:
        Segmenter(module, mode="slide")(image)
    message = str(error.value)
    assert "inference.mode=slide runs the network on this 256x192 image at its own scale" in message
    assert "resized to 64x64 (its checkpoint's inference.mode=whole)" in message
    assert "everything 4.0x larger than in training" in message  # 256 / 64, the wider side
    assert "inference.mode=auto (whole for this model)" in message
    assert "inference.scales=[0.25]" in message and "inference.check_scale=false" in message
    # each fix the message names works
    assert Segmenter(module, mode="slide", scales=(0.25,))(image).shape == (3, 192, 256)
    assert Segmenter(module, mode="slide", check_scale=False)(image).shape == (3, 192, 256)
    # at about the training size, sliding is what whole-image inference would see: allowed
    assert Segmenter(module, mode="slide")(random_image(80, 90)).shape == (3, 80, 90)


def test_whole_on_a_model_trained_on_windows_at_native_scale_is_refused():
    module = pointwise_module()
    module.hparams.inference = {"image_size": [64, 64], "mode": "slide"}
    with pytest.raises(LightsegError, match=r"resizes this 256x256 image to 64x64.*4\.0x smaller"):
        Segmenter(module, mode="whole")(random_image(256, 256))
    assert Segmenter(module, mode="whole")(random_image(80, 70)).shape == (3, 80, 70)
    assert build_segmenter(module, {"mode": "auto"}).mode == "slide"


def test_make_eval_with_slide_on_the_demo_model_is_refused(demo_checkpoint, tmp_path):
    """`make eval ARGS="inference.mode=slide"` on a model trained on resized whole images."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "eval",
            [f"ckpt_path={demo_checkpoint}", f"output_dir={tmp_path}", "inference.mode=slide"],
        )
    with pytest.raises(LightsegError, match=r"trained on whole images resized to 64x64") as error:
        evaluate(cfg, data_from_run=True)
    assert "a scale it never learned" in str(error.value)
    assert not tmp_path.joinpath("eval.json").exists()


# --- Gaussian importance weighting of sliding windows ------------------------------------------


def test_gaussian_window_weights_by_hand():
    weights = gaussian_weights((9, 17)).numpy()  # sigma 9/8 down, 17/8 across
    assert weights.shape == (9, 17)
    assert np.unravel_index(weights.argmax(), weights.shape) == (4, 8) and weights[4, 8] == 1
    assert weights[5, 8] == pytest.approx(np.exp(-0.5 / (9 / 8) ** 2), rel=1e-6)
    assert weights[4, 0] == pytest.approx(np.exp(-0.5 * (8 / (17 / 8)) ** 2), rel=1e-5)
    assert weights[0, 0] == pytest.approx(np.exp(-0.5 * ((4 / (9 / 8)) ** 2 + 64 / (17 / 8) ** 2)))
    np.testing.assert_array_equal(weights, weights[::-1, ::-1])  # symmetric about the centre
    assert weights.min() > 0  # every pixel of a window counts


def test_gaussian_slide_over_one_window_equals_whole_image_inference(demo_checkpoint):
    module = load_module(demo_checkpoint)
    image = random_image(64, 64)
    whole = Segmenter(module, mode="whole")(image)
    gaussian = Segmenter(module, mode="slide", window_weights="gaussian")(image)
    np.testing.assert_allclose(gaussian, whole, atol=1e-6)


def test_gaussian_weighted_windows_blend_to_the_full_image_output_of_a_pointwise_model():
    image = random_image(100, 150)

    def slide(module, weights):
        options = {"image_size": (64, 64), "stride": (32, 48), "check_scale": False}
        return Segmenter(module, mode="slide", window_weights=weights, **options)(image)

    module = pointwise_module()  # the same output in every window: any weighting gives it back
    full = module.task.probabilities(module.net(Segmenter(module).normalize(image)))[0]
    np.testing.assert_allclose(slide(module, "gaussian"), full.detach().numpy(), atol=1e-6)
    contextual = pointwise_module(kernel=3)  # window borders differ: the weighting shows
    assert not np.allclose(slide(contextual, "gaussian"), slide(contextual, "mean"), atol=1e-6)
    with pytest.raises(LightsegError, match=r"inference\.window_weights='box'.*mean or gaussian"):
        build_segmenter(module, {"window_weights": "box"})

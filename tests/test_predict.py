"""`make predict`: mask, overlay and probability files, EXIF orientation, skipped files, effects."""

from __future__ import annotations

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from lightseg import CONFIG_DIR
from lightseg.data.source import read_label_png
from lightseg.errors import LightsegError
from lightseg.tools.effects import apply_effect, color_splash, replace_background, soft_alpha
from lightseg.tools.inference import Segmenter, load_module
from lightseg.tools.predict import predict

EXIF_ORIENTATION = 0x0112


def predict_config(ckpt, source, output, *overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "predict", [f"ckpt_path={ckpt}", f"input={source}", f"output={output}", *overrides]
        )


@pytest.fixture
def photos(tmp_path):
    """Two readable images of odd sizes (one stored sideways with an EXIF rotation), a corrupt
    one, and a file that is not an image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(folder / "a.png")
    sideways = Image.fromarray(rng.integers(0, 256, (40, 90, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    sideways.save(folder / "b.jpg", exif=exif)
    (folder / "c.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_writes_masks_overlays_and_probabilities(demo_checkpoint, photos, tmp_path):
    out = tmp_path / "out"
    summary = predict(predict_config(demo_checkpoint, photos, out, "probabilities=true"))
    assert summary.images == 2
    assert [p.name for p, _ in summary.skipped] == ["c.jpg"]
    assert sorted(p.name for p in out.iterdir()) == [
        "a_mask.png",
        "a_overlay.png",
        "a_prob.png",
        "b_mask.png",
        "b_overlay.png",
        "b_prob.png",
    ]
    segmenter = Segmenter(load_module(demo_checkpoint))
    image = np.asarray(Image.open(photos / "a.png").convert("RGB"))
    probabilities = segmenter(image)
    mask = Image.open(out / "a_mask.png")
    assert mask.mode == "P" and mask.size == (70, 50)
    np.testing.assert_array_equal(read_label_png(out / "a_mask.png", 2), probabilities.argmax(0))
    prob = np.asarray(Image.open(out / "a_prob.png"))
    np.testing.assert_array_equal(prob, np.round(probabilities[1] * 255).astype(np.uint8))
    assert Image.open(out / "a_overlay.png").size == (70, 50)
    # b.jpg is 90x40 on disk; its EXIF tag turns it upright to 40x90.
    assert Image.open(out / "b_mask.png").size == (40, 90)


def test_effects_are_written_for_each_image(demo_checkpoint, photos, tmp_path):
    out = tmp_path / "out"
    predict(predict_config(demo_checkpoint, photos / "a.png", out, "effect=color-splash"))
    assert sorted(p.name for p in out.iterdir()) == [
        "a_color-splash.png",
        "a_mask.png",
        "a_overlay.png",
    ]
    background = tmp_path / "beach.png"
    Image.new("RGB", (10, 10), (0, 0, 255)).save(background)
    predict(
        predict_config(
            demo_checkpoint, photos / "a.png", out, "effect=background", f"background={background}"
        )
    )
    assert Image.open(out / "a_background.png").size == (70, 50)


def test_predict_refuses_bad_requests(demo_checkpoint, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LightsegError, match="holds no images"):
        predict(predict_config(demo_checkpoint, empty, tmp_path / "out"))
    nested = tmp_path / "nested" / "deeper"
    nested.mkdir(parents=True)
    Image.new("RGB", (33, 20)).save(nested / "x.png")
    with pytest.raises(LightsegError, match="recursive=true"):
        predict(predict_config(demo_checkpoint, nested.parent, tmp_path / "out"))
    found = predict(
        predict_config(demo_checkpoint, nested.parent, tmp_path / "o", "recursive=true")
    )
    assert found.images == 1
    with pytest.raises(LightsegError, match="Unknown effect 'blur'"):
        predict(predict_config(demo_checkpoint, empty, tmp_path / "out", "effect=blur"))
    with pytest.raises(LightsegError, match="does not exist"):
        predict(predict_config(tmp_path / "missing.ckpt", empty, tmp_path / "out"))


def test_background_replacement_by_hand():
    image = np.full((1, 3, 3), 200, np.uint8)
    probability = np.array([[1.0, 0.25, 0.0]], np.float32)
    result = replace_background(image, probability, background=(0, 100, 40), feather=0)
    np.testing.assert_array_equal(result[0, 0], [200, 200, 200])
    np.testing.assert_array_equal(result[0, 1], [50, 125, 80])  # 0.25 * 200 + 0.75 * colour
    np.testing.assert_array_equal(result[0, 2], [0, 100, 40])


def test_color_splash_keeps_the_person_and_greys_the_rest():
    image = np.zeros((4, 4, 3), np.uint8)
    image[...] = (200, 40, 10)
    probability = np.zeros((4, 4), np.float32)
    probability[:, :2] = 1
    result = color_splash(image, probability, feather=0)
    np.testing.assert_array_equal(result[:, :2], image[:, :2])
    grey = round(0.299 * 200 + 0.587 * 40 + 0.114 * 10)  # ITU-R BT.601 luma, as OpenCV
    np.testing.assert_array_equal(result[:, 2:], np.full((4, 2, 3), grey))


def test_feathering_softens_the_edge_only():
    probability = np.zeros((9, 40), np.float32)
    probability[:, :20] = 1
    alpha = soft_alpha(probability, feather=3)
    assert alpha[4, 0] == pytest.approx(1, abs=1e-3) and alpha[4, 39] == pytest.approx(0, abs=1e-3)
    assert 0.3 < alpha[4, 19] < 0.7 and 0.3 < alpha[4, 20] < 0.7
    with pytest.raises(LightsegError, match="Unknown effect"):
        apply_effect("sepia", np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2)))

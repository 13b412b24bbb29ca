"""`make predict`: mask, overlay and probability files, EXIF orientation, skipped files, effects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hydra import compose, initialize_config_dir
from PIL import Image

import lightseg
from lightseg import CONFIG_DIR
from lightseg.checkpoints import load_module
from lightseg.data.source import read_label_png
from lightseg.errors import LightsegError
from lightseg.tools.effects import (
    apply_effect,
    color_splash,
    hard_alpha,
    replace_background,
    soft_alpha,
)
from lightseg.tools.inference import Segmenter
from lightseg.tools.predict import predict
from tests.runs import FullDisk
from tests.test_export import ARCHITECTURES, tiny_checkpoint

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


def test_a_full_disk_is_one_paragraph_and_leaves_no_partial_picture(
    demo_checkpoint, photos, tmp_path, monkeypatch
):
    original, saved = Image.Image.save, []

    def disk_fills_on_third(picture, path, *args, **kwargs):
        saved.append(path)
        if len(saved) < 3:
            return original(picture, path, *args, **kwargs)
        with FullDisk(open(path, "wb"), room=100) as file:  # PIL's encoder writes into it
            original(picture, file, format="PNG")

    monkeypatch.setattr(Image.Image, "save", disk_fills_on_third)
    out = tmp_path / "out"
    with pytest.raises(LightsegError) as raised:
        predict(predict_config(demo_checkpoint, photos, out))
    message = str(raised.value)
    assert f"The disk is full: '{saved[2].name}' could not be written in '{out}'" in message
    assert "(2 file(s) kept)" in message
    assert sorted(out.iterdir()) == sorted(saved[:2])  # whole pictures only
    monkeypatch.undo()
    assert all(Image.open(p).size == (70, 50) for p in saved[:2])


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


# --- a hard mask for effects -----------------------------------------------------------------


def distances_to(mask: np.ndarray) -> np.ndarray:
    """Each pixel's distance to the nearest pixel of the other side of ``mask`` (brute force)."""
    points = np.argwhere(np.ones_like(mask))
    inside, outside = np.argwhere(mask), np.argwhere(~mask)
    result = np.empty(mask.shape)
    for (y, x), is_in in zip(points, mask.ravel(), strict=True):
        other = outside if is_in else inside
        result[y, x] = np.sqrt(((other - (y, x)) ** 2).sum(1)).min()
    return result


def test_with_a_threshold_no_background_pixel_beyond_the_feather_keeps_its_colour():
    """An under-trained model: 0.9 on the person, 0.25 everywhere else."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (30, 44, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:30, :44]
    probability = np.where((yy - 14) ** 2 + (xx - 20) ** 2 < 81, 0.9, 0.25).astype(np.float32)
    colour = np.array([0, 177, 64], np.uint8)
    feather = 3.0
    result = replace_background(image, probability, colour, feather, threshold=0.5)
    mask = probability >= 0.5
    beyond = distances_to(mask) - 0.5 > feather  # the edge lies half a pixel from each centre
    background, person = beyond & ~mask, beyond & mask
    assert background.sum() > 800 and person.sum() > 30
    assert (result[background] == colour).all()  # only the new background
    assert (result[person] == image[person]).all()  # only the person
    edge = ~beyond
    assert ((result[edge] != colour).any(1) & (result[edge] != image[edge]).any(1)).sum() > 50

    soft = replace_background(image, probability, colour, feather=0, threshold=None)
    leaked = np.round(0.25 * image[background] + 0.75 * colour.astype(np.float32))
    np.testing.assert_allclose(soft[background], leaked, atol=1)  # a quarter shows through
    assert (hard_alpha(probability, 0.5, feather=0) == mask).all()


def test_predict_replaces_the_background_behind_a_hard_mask(demo_checkpoint, tmp_path):
    photo = tmp_path / "p.png"
    image = np.random.default_rng(4).integers(0, 256, (48, 60, 3), dtype=np.uint8)
    Image.fromarray(image).save(photo)
    out = tmp_path / "out"
    predict(predict_config(demo_checkpoint, photo, out, "effect=background", "feather=2"))
    result = np.asarray(Image.open(out / "p_background.png"))
    foreground = 1 - Segmenter(load_module(demo_checkpoint))(image)[0]
    mask = foreground >= 0.5  # configs/predict.yaml: threshold 0.5
    beyond = distances_to(mask) - 0.5 > 2
    assert (result[beyond & ~mask] == (0, 177, 64)).all()
    assert (result[beyond & mask] == image[beyond & mask]).all()
    assert (beyond & ~mask).sum() + (beyond & mask).sum() > 1000


# --- every image type training accepts, on an RGB model ---------------------------------------


def test_every_image_type_is_predicted_as_an_rgb_model_sees_it(demo_checkpoint, tmp_path):
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (33, 47), dtype=np.uint8)
    deep = rng.integers(0, 65536, (33, 47), dtype=np.uint16)
    rgba = rng.integers(0, 256, (33, 47, 4), dtype=np.uint8)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rgb).save(folder / "rgb.png")
    Image.fromarray(rgb).save(folder / "bitmap.bmp")
    Image.fromarray(gray).save(folder / "gray.png")
    Image.fromarray(deep).save(folder / "deep.png")  # 16-bit grayscale PNG
    Image.fromarray(rgba).save(folder / "rgba.png")
    Image.fromarray(np.dstack([gray, rgba[..., 3]])).save(folder / "gray_alpha.png")
    Image.fromarray(rgb).quantize(16).save(folder / "palette.png")
    tifffile.imwrite(folder / "three.tif", rgb)
    tifffile.imwrite(folder / "one.tif", deep)
    tifffile.imwrite(folder / "four.tif", rgba)
    out = tmp_path / "out"
    summary = predict(predict_config(demo_checkpoint, folder, out))
    assert summary.images == 9
    assert summary.skipped == [
        (
            folder / "four.tif",
            "4 channel(s) (RGBA or 4 bands), but the model takes 3 (the channels of the images "
            "it was trained on)",
        )
    ]
    segmenter = Segmenter(load_module(demo_checkpoint))
    palette = np.asarray(Image.open(folder / "palette.png").convert("RGB"))
    seen = {  # what the model must have been given for each file
        "rgb": rgb,
        "bitmap": rgb,
        "three": rgb,
        "gray": np.repeat(gray[..., None], 3, 2),
        "gray_alpha": np.repeat(gray[..., None], 3, 2),
        "deep": np.repeat(deep[..., None], 3, 2),  # uint16: scaled by 65535
        "one": np.repeat(deep[..., None], 3, 2),
        "rgba": rgba[..., :3],
        "palette": palette,
    }
    for stem, pixels in seen.items():
        expected = segmenter(pixels).argmax(0)
        np.testing.assert_array_equal(read_label_png(out / f"{stem}_mask.png", 2), expected, stem)


# --- path arguments, as a user types them ----------------------------------------------------


def run_predict(tmp_path, *arguments: str) -> subprocess.CompletedProcess:
    src = Path(lightseg.__file__).parents[1]  # this checkout's package, not an installed one
    return subprocess.run(
        [sys.executable, "-m", "lightseg.tools.predict", *arguments],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_command_line_errors_are_one_paragraph_and_exit_1(demo_checkpoint, photos, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png")
    (tmp_path / "taken").write_text("a file")
    cases = {
        "missing checkpoint": (
            [f"ckpt_path={tmp_path / 'nope.ckpt'}", f"input={photos}", "output=o"],
            "does not exist",
        ),
        "nothing readable": (
            [f"ckpt_path={demo_checkpoint}", f"input={broken}", "output=o"],
            f"No image of input='{broken}' could be predicted",
        ),
        "output is a file": (
            [f"ckpt_path={demo_checkpoint}", f"input={photos}", f"output={tmp_path / 'taken'}"],
            "is a file; give a folder",
        ),
    }
    for name, (arguments, expected) in cases.items():
        result = run_predict(tmp_path, *arguments)
        assert result.returncode == 1, name
        assert "Traceback" not in result.stderr and expected in result.stderr, name
        assert result.stderr.count("lightseg: error:") == 1, name
    result = run_predict(tmp_path, f"ckpt_path={demo_checkpoint}", f"input={photos}", "output=o")
    assert result.returncode == 0, result.stderr
    assert (
        "Predicted 2 image(s)" in result.stdout and "c.jpg: not a readable image" in result.stdout
    )
    assert "not writable" not in result.stdout + result.stderr  # no NumPy warning


def test_bad_paths_and_values_are_clear_errors(demo_checkpoint, demo_run, photos, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(LightsegError, match=r"is a folder; give a checkpoint file") as error:
        predict(predict_config(demo_run, photos, out))
    assert f"best checkpoint is '{demo_run / 'checkpoints' / 'best.ckpt'}'" in str(error.value)
    with pytest.raises(LightsegError, match="not a readable image"):
        predict(predict_config(demo_checkpoint, photos / "notes.txt", out))
    with pytest.raises(LightsegError, match="Cannot write to output folder"):
        predict(predict_config(demo_checkpoint, photos, photos / "notes.txt" / "sub"))
    empty = tmp_path / "empty" / "deeper"
    empty.mkdir(parents=True)
    with pytest.raises(LightsegError, match="holds no images") as error:
        predict(predict_config(demo_checkpoint, empty.parent, out))
    assert "recursive" not in str(error.value)  # the subfolders hold none either

    effect = "effect=background"
    for background, message in [
        (tmp_path / "beach.png", "neither an RGB colour"),
        (photos / "notes.txt", "cannot be used as a picture: not a readable image"),
        ("[0,255]", r"must be an RGB colour, 3 values in 0\.\.255"),
        ("7", "must be an RGB colour"),
    ]:
        with pytest.raises(LightsegError, match=message):
            predict(
                predict_config(demo_checkpoint, photos, out, effect, f"background={background}")
            )
    for setting, message in [
        ("threshold=1.5", "threshold=1.5 must be between 0 and 1"),
        ("feather=-1", "feather=-1 must be >= 0"),
        ("alpha=2", r"alpha=2 \(the overlay's opacity\) must be in 0\.\.1"),
    ]:
        with pytest.raises(LightsegError, match=message):
            predict(predict_config(demo_checkpoint, photos, out, setting))
    assert not out.exists()  # nothing was written for a refused request


def test_a_16_bit_grayscale_picture_is_a_background(demo_checkpoint, photos, tmp_path):
    deep = (np.arange(50 * 70, dtype=np.uint16).reshape(50, 70) * 18).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    out = tmp_path / "out"
    overrides = ("effect=background", f"background={tmp_path / 'deep.png'}", "threshold=0.999")
    predict(predict_config(demo_checkpoint, photos / "a.png", out, *overrides))
    result = np.asarray(Image.open(out / "a_background.png")).astype(int)
    expected = np.round(deep / 65535 * 255)  # its grey, scaled by 16 bits, not clipped at 255
    far = np.abs(result[..., 0] - expected) <= 1
    assert far.mean() > 0.5 and result[..., 0].max() > 200


def test_multiclass_probabilities_are_refused_but_a_probability_map_is_the_winners(
    photos, tmp_path
):
    ckpt = tiny_checkpoint(tmp_path / "m.ckpt", ARCHITECTURES["unet"], ["bg", "a", "b"])
    with pytest.raises(LightsegError, match="binary models; this model has 3 classes"):
        predict(predict_config(ckpt, photos, tmp_path / "out", "probabilities=true"))
    with pytest.raises(LightsegError, match=r"unknown map\(s\) \['entropy'\]; choose among"):
        predict(predict_config(ckpt, photos, tmp_path / "out", "maps=[entropy]"))
    predict(predict_config(ckpt, photos / "a.png", tmp_path / "out", "maps=probability"))
    image = np.asarray(Image.open(photos / "a.png").convert("RGB"))
    expected = Segmenter(load_module(ckpt))(image).max(0)  # the predicted class's
    read = np.asarray(Image.open(tmp_path / "out" / "a_probability.png")) / 65535
    assert np.abs(read - expected).max() <= 1 / 65535 and expected.min() < 0.999


def test_predict_takes_an_ensemble_as_eval_does(demo_checkpoint, photos, tmp_path):
    copy = tmp_path / "copy.ckpt"
    copy.write_bytes(demo_checkpoint.read_bytes())
    both = f"'{demo_checkpoint},{copy}'"  # as `make predict CKPT=a,b` quotes it
    for ckpt, out in ((demo_checkpoint, "one"), (both, "two")):
        predict(predict_config(ckpt, photos, tmp_path / out, "probabilities=true"))
    for name in ("a_mask.png", "a_prob.png", "b_mask.png"):
        one, two = (np.asarray(Image.open(tmp_path / o / name)) for o in ("one", "two"))
        np.testing.assert_array_equal(one, two)


def test_probability_and_uncertainty_maps_read_back_to_16_bits(demo_checkpoint, photos, tmp_path):
    out = tmp_path / "out"
    predict(
        predict_config(demo_checkpoint, photos / "a.png", out, "maps=[probability,uncertainty]")
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "a_mask.png",
        "a_overlay.png",
        "a_probability.png",
        "a_uncertainty.png",
    ]
    image = np.asarray(Image.open(photos / "a.png").convert("RGB"))
    probabilities = Segmenter(load_module(demo_checkpoint))(image).astype(np.float64)
    entropy = -(probabilities * np.log(probabilities)).sum(0) / np.log(2)
    for name, expected in (("probability", probabilities[1]), ("uncertainty", entropy)):
        picture = Image.open(out / f"a_{name}.png")
        assert picture.mode == "I;16" and picture.size == (70, 50)
        read = np.asarray(picture) / 65535
        assert np.abs(read - expected).max() <= 1 / 65535
    assert np.ptp(entropy) > 0.01  # not a constant map

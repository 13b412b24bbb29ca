"""Tools follow the checkpoint: folder models trained on 1-channel 16-bit PNGs and on 4-band
TIFFs predict, evaluate and export (ONNX, TorchScript) with parity, as an RGB model does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from lightseg import CONFIG_DIR
from lightseg.checkpoints import load_module, model_input
from lightseg.data.pixels import read_image
from lightseg.data.source import read_label_png
from lightseg.errors import LightsegError
from lightseg.tools.eval import evaluate
from lightseg.tools.export import export
from lightseg.tools.inference import Segmenter
from lightseg.tools.predict import predict
from lightseg.train import train
from tests.conftest import ONE_STEP, make_config
from tests.fixtures_datasets import FOLDER_CASES, folder_label

TRAIN_FAST = (*ONE_STEP, "model=unet_resnet18", "data.image_size=32", "print_config=false")


def gray16(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 65536, (height, width), dtype=np.uint16)


def bands4(seed: int, height: int, width: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10000, (height, width, 4), dtype=np.uint16)


def write_png(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels).save(path)
    return path


def write_tiff(path: Path, pixels: np.ndarray) -> Path:
    tifffile.imwrite(path, pixels)
    return path


def trained_folder_model(tmp_path: Path, channels: int) -> Path:
    """A folder dataset of ``channels``-channel images (16-bit PNG or 4-band TIFF), one training
    step on it with lightseg.train.train, and the checkpoint training wrote."""
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for seed, case in enumerate(FOLDER_CASES):
        width, height, _, _ = FOLDER_CASES[case]
        if channels == 1:
            write_png(root / "images" / f"{case}.png", gray16(seed, height, width))
        else:
            write_tiff(root / "images" / f"{case}.tif", bands4(seed, height, width))
        write_png(root / "masks" / f"{case}.png", folder_label(case) * 255)
    cfg = make_config(
        tmp_path,
        "data=folder",
        f"data.source.root={root}",
        f"data.source.in_channels={channels}",
        "data.mean=auto",
        "data.std=auto",
        *TRAIN_FAST,
    )
    train(cfg)
    return tmp_path / "run" / "checkpoints" / "best.ckpt"


@pytest.fixture(scope="module")
def gray_checkpoint(tmp_path_factory, one_thread) -> Path:
    return trained_folder_model(tmp_path_factory.mktemp("gray"), channels=1)


@pytest.fixture(scope="module")
def bands_checkpoint(tmp_path_factory, one_thread) -> Path:
    return trained_folder_model(tmp_path_factory.mktemp("bands"), channels=4)


def compose_config(name: str, *overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(name, list(overrides))


def test_the_checkpoint_says_what_the_model_takes(gray_checkpoint, bands_checkpoint):
    gray, bands = (
        model_input(load_module(gray_checkpoint)),
        model_input(load_module(bands_checkpoint)),
    )
    assert (gray.channels, gray.image_size, gray.stored, gray.mode) == (1, (32, 32), True, "whole")
    assert (bands.channels, bands.image_size) == (4, (32, 32))
    assert gray.multiple == bands.multiple == 1  # smp's U-Net takes any side


# --- predict ---------------------------------------------------------------------------------


def test_a_1_channel_model_predicts_16_bit_and_8_bit_grayscale_and_skips_rgb(
    gray_checkpoint, tmp_path
):
    photos = tmp_path / "in"
    photos.mkdir()
    deep = write_png(photos / "deep.png", gray16(50, 30, 41))
    flat = write_png(photos / "flat.png", (gray16(51, 22, 35) >> 8).astype(np.uint8))
    band = write_tiff(photos / "band.tif", gray16(52, 26, 30))
    write_png(photos / "rgb.png", np.zeros((20, 20, 3), np.uint8))
    out = tmp_path / "out"
    summary = predict(
        compose_config(
            "predict",
            f"ckpt_path={gray_checkpoint}",
            f"input={photos}",
            f"output={out}",
            "probabilities=true",
        )
    )
    assert summary.images == 3
    assert summary.skipped == [
        (
            photos / "rgb.png",
            "3 channel(s) (RGB), but the model takes 1 (the channels of the images it was "
            "trained on)",
        )
    ]
    segmenter = Segmenter(load_module(gray_checkpoint))
    for path, pixels in [
        (deep, np.asarray(Image.open(deep))),  # uint16, scaled by 65535 as in training
        (flat, np.asarray(Image.open(flat))),  # uint8, scaled by 255
        (band, tifffile.imread(band)),
    ]:
        expected = segmenter(pixels[..., None])
        stem = path.stem
        np.testing.assert_array_equal(
            read_label_png(out / f"{stem}_mask.png", 2), expected.argmax(0), err_msg=stem
        )
        prob = np.asarray(Image.open(out / f"{stem}_prob.png"))
        np.testing.assert_array_equal(prob, np.round(expected[1] * 255).astype(np.uint8))
        assert Image.open(out / f"{stem}_overlay.png").mode == "RGB"
    # 16-bit pixels are not clipped or cut to 8 bits on the way in
    assert read_image(deep, 1).dtype == np.uint16 and read_image(deep, 1).max() > 60000


def test_a_4_band_model_predicts_tiffs_and_rgba_pngs_as_four_channels(bands_checkpoint, tmp_path):
    photos = tmp_path / "in"
    photos.mkdir()
    tiff = write_tiff(photos / "scene.tif", bands4(60, 25, 33))
    rgba = np.random.default_rng(61).integers(0, 256, (21, 27, 4), dtype=np.uint8)
    write_png(photos / "rgba.png", rgba)
    write_png(photos / "gray.png", np.zeros((20, 20), np.uint8))
    out = tmp_path / "out"
    summary = predict(
        compose_config(
            "predict", f"ckpt_path={bands_checkpoint}", f"input={photos}", f"output={out}"
        )
    )
    assert summary.images == 2
    assert [(p.name, why.split(",")[0]) for p, why in summary.skipped] == [
        ("gray.png", "1 channel(s) (grayscale)")
    ]
    segmenter = Segmenter(load_module(bands_checkpoint))
    for stem, pixels in (("scene", tifffile.imread(tiff)), ("rgba", rgba)):
        mask = read_label_png(out / f"{stem}_mask.png", 2)
        np.testing.assert_array_equal(mask, segmenter(pixels).argmax(0), err_msg=stem)
        assert mask.shape == pixels.shape[:2]


def test_a_folder_where_no_image_fits_the_model_is_an_error(bands_checkpoint, tmp_path):
    photos = tmp_path / "in"
    photos.mkdir()
    write_png(photos / "a.png", np.zeros((20, 20, 3), np.uint8))
    (photos / "b.png").write_bytes(b"\x89PNG broken")
    cfg = compose_config(
        "predict", f"ckpt_path={bands_checkpoint}", f"input={photos}", f"output={tmp_path / 'o'}"
    )
    with pytest.raises(LightsegError) as error:
        predict(cfg)
    message = str(error.value)
    assert message.startswith(f"No image of input='{photos}' could be predicted")
    assert f"{photos / 'a.png'}: 3 channel(s) (RGB), but the model takes 4" in message
    assert f"{photos / 'b.png'}: not a readable image (UnidentifiedImageError" in message


def test_eval_refuses_data_of_another_channel_count(gray_checkpoint, tmp_path, data_dir):
    cfg = compose_config(
        "eval",
        f"ckpt_path={gray_checkpoint}",
        "data=folder",
        f"data.source.root={data_dir / 'folder'}",
        f"output_dir={tmp_path}",
    )
    with pytest.raises(LightsegError, match="takes 1-channel images, but the data config reads 3"):
        evaluate(cfg, data_from_run=False)


# --- export ----------------------------------------------------------------------------------


def export_config(ckpt: Path, fmt: str, output: Path):
    return compose_config(
        "export",
        f"ckpt_path={ckpt}",
        f"format={fmt}",
        f"output={output}",
        "check.batch_sizes=[1,2]",
    )


def check_export(report: dict, channels: int) -> None:
    """Parity at every default check size, and a sidecar that describes the C-channel input."""
    parity = report["parity"]
    assert parity["passed"] and parity["error"] < 1e-4 and parity["mask_disagreement"] == 0
    # training size 32x32; one 32 px taller and 64 px wider; one 1 px taller and 3 px wider
    sizes = [[32, 32], [64, 96], [33, 35]]
    assert [c["input"] for c in parity["checks"]] == [
        [b, channels, *size] for b in (1, 2) for size in sizes
    ]
    assert all(c["output"][1] == 1 for c in parity["checks"])
    assert report["input"]["shape"] == ["N", channels, "H", "W"]
    assert report["input"]["channels"] == channels and report["input"]["sides_multiple_of"] == 1
    assert len(report["input"]["mean"]) == len(report["input"]["std"]) == channels
    assert f"{channels} channel(s)" in report["input"]["layout"]
    assert report["dynamic_axes"] == ["batch", "height", "width"]


def test_a_1_channel_folder_model_exports_to_onnx_with_parity(gray_checkpoint, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = tmp_path / "gray.onnx"
    report = export(export_config(gray_checkpoint, "onnx", path))
    check_export(report, channels=1)
    assert json.loads((tmp_path / "gray.onnx.json").read_text())["parity"] == report["parity"]

    # A real 16-bit image at its own size (28x40: no check used it), scaled as documented.
    pixels = gray16(70, 28, 40).astype(np.float32)[None, None] / 65535
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": pixels})[0]
    module = load_module(gray_checkpoint)
    with torch.no_grad():
        expected = module(module.normalize(torch.from_numpy(pixels))).numpy()
    assert logits.shape == (1, 1, 28, 40)
    assert np.abs(logits - expected).max() / max(1, np.abs(expected).max()) < 1e-4


@pytest.mark.parametrize(
    ("kind", "fmt"),
    [
        ("gray", "torchscript"),
        ("bands", "torchscript"),
        pytest.param("bands", "onnx", marks=pytest.mark.slow),
    ],
)
def test_1_channel_and_4_band_models_export_with_parity(kind, fmt, request, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    ckpt = request.getfixturevalue(f"{kind}_checkpoint")
    report = export(export_config(ckpt, fmt, tmp_path / f"{kind}.{fmt}"))
    check_export(report, channels=1 if kind == "gray" else 4)

"""Export: ONNX and TorchScript files that match PyTorch, their sidecar, fallbacks and errors."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import lightseg
from lightseg import CONFIG_DIR
from lightseg.checkpoints import load_module
from lightseg.errors import LightsegError
from lightseg.models import SegmentationModule
from lightseg.models.network import without_pretrained
from lightseg.models.segnet import SegNet
from lightseg.tools.export import FORMATS, export, get_format
from lightseg.train import train
from tests.conftest import CE_DICE, EXPERIMENTS, ONE_STEP, make_config, metrics_for

#: The demo checkpoint's training size, and a second size and batch sizes for the check.
SIZES = ([64, 64], [96, 128])
BATCHES = [1, 3]


def export_config(ckpt: Path, fmt: str, *overrides: str) -> DictConfig:
    """The real configs/export.yaml with a small check."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            config_name="export",
            overrides=[
                f"ckpt_path={ckpt}",
                f"format={fmt}",
                f"check.batch_sizes={BATCHES}".replace(" ", ""),
                f"check.image_sizes={list(SIZES)}".replace(" ", ""),
                *overrides,
            ],
        )


def reference_logits(ckpt: Path, images: torch.Tensor) -> torch.Tensor:
    """What the contract promises: the checkpoint's own normalisation, then the network."""
    module = load_module(ckpt)
    norm = module.hparams.normalization
    mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return module((images - mean) / std)


def assert_parity(report: dict, channels: int, sizes=SIZES, in_channels: int = 3) -> None:
    parity = report["parity"]
    assert parity["passed"] and parity["max_abs_diff"] < parity["tolerance"] == 1e-4
    inputs = [check["input"] for check in parity["checks"]]
    assert sorted(inputs) == sorted([b, in_channels, *size] for b in BATCHES for size in sizes)
    for check in parity["checks"]:
        batch, _, height, width = check["input"]
        assert check["output"] == [batch, channels, height, width]
        assert check["max_abs_diff"] < 1e-4
        assert check["error"] == check["max_abs_diff"] / max(1, check["max_abs_logit"])
        assert check["mask_disagreement"] == 0.0


ARCHITECTURES = {
    "unet": {
        "_target_": "lightseg.models.smp_models.build",
        "arch": "Unet",
        "encoder_name": "resnet18",
        "encoder_weights": None,
    },
    "fpn": {
        "_target_": "lightseg.models.smp_models.build",
        "arch": "FPN",
        "encoder_name": "resnet18",
        "encoder_weights": None,
    },
    "segnet": {"_target_": "lightseg.models.segnet.build", "encoder_weights": None},
    "lraspp": {
        "_target_": "lightseg.models.torchvision_models.build",
        "arch": "lraspp_mobilenet_v3_large",
        "weights": None,
        "encoder_weights": None,
    },
    "deeplabv3plus": {
        "_target_": "lightseg.models.smp_models.build",
        "arch": "DeepLabV3Plus",
        "encoder_name": "resnet18",
        "encoder_weights": None,
    },
}


def tiny_checkpoint(path: Path, model: dict, classes: list[str], size=(64, 64)) -> Path:
    """An untrained lightseg checkpoint: what training stores, without training."""
    hparams = {
        "model": model,
        "loss": CE_DICE,
        "metrics": metrics_for(classes),
        "optimizer": {"_target_": "torch.optim.Adam"},
        "classes": classes,
        "normalization": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "inference": {"image_size": list(size), "mode": "whole"},
    }
    state = SegmentationModule(**hparams).state_dict()
    torch.save({"hyper_parameters": hparams, "state_dict": state}, path)
    return path


def test_onnx_export_matches_pytorch(demo_checkpoint, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")  # torch.onnx's exporter
    path = tmp_path / "demo.onnx"
    report = export(export_config(demo_checkpoint, "onnx", f"output={path}"))
    assert_parity(report, channels=1)
    assert report["dynamic_axes"] == ["batch", "height", "width"]
    # every check side is a multiple of 32, so that is all the file is said to take
    assert report["input"]["sides_multiple_of"] == 32 and report["network_input_multiple"] == 1

    # A shape the check did not use: the file follows the documented input contract.
    images = torch.rand(2, 3, 32, 160, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    logits = session.run(["logits"], {"image": images.numpy()})[0]
    assert logits.shape == (2, 1, 32, 160)
    np.testing.assert_allclose(logits, reference_logits(demo_checkpoint, images), atol=1e-4)


def test_command_line_exports_torchscript_next_to_the_checkpoint(demo_checkpoint, tmp_path):
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    ckpt.symlink_to(demo_checkpoint)
    src = Path(lightseg.__file__).parents[1]  # this checkout's package, not an installed one
    result = subprocess.run(
        [sys.executable, "-m", "lightseg.tools.export", f"ckpt_path={ckpt}", "format=torchscript"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(src)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "max abs diff" in result.stdout and "[3, 3, 96, 128]" in result.stdout
    assert "Warning" not in result.stdout + result.stderr  # the exporters are kept quiet

    sidecar = json.loads((ckpt.parent / "best.torchscript.pt.json").read_text())
    # default check: batch 1 and 3, the training size, one 32 px taller and 64 px wider, and
    # (the U-Net takes any side: input_multiple 1) one 1 px taller and 3 px wider
    assert_parity(sidecar, channels=1, sizes=[*SIZES, [65, 67]])
    assert sidecar["input"]["sides_multiple_of"] == sidecar["network_input_multiple"] == 1
    assert sidecar["dynamic_axes"] == ["batch", "height", "width"]
    assert sidecar["format"] == "torchscript" and sidecar["file"] == "best.torchscript.pt"
    assert sidecar["classes"] == ["background", "lesion"] and sidecar["binary"] is True
    assert sidecar["training_image_size"] == [64, 64]
    assert sidecar["input"]["shape"] == ["N", 3, "H", "W"]
    assert sidecar["input"]["dtype"] == "float32" and "0..1" in sidecar["input"]["layout"]
    assert len(sidecar["input"]["mean"]) == len(sidecar["input"]["std"]) == 3
    assert sidecar["output"]["shape"] == ["N", 1, "H", "W"]
    assert "sigmoid" in sidecar["output"]["meaning"]

    # A shape the check did not use: the file follows the documented input contract.
    images = torch.rand(2, 3, 32, 160, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in torch 2.x
        loaded = torch.jit.load(str(ckpt.parent / "best.torchscript.pt"))
    with torch.no_grad():
        logits = loaded(images)
    assert logits.shape == (2, 1, 32, 160)
    torch.testing.assert_close(logits, reference_logits(demo_checkpoint, images), atol=1e-4, rtol=0)


def perturb(monkeypatch, fmt: str, error: float) -> None:
    """Make the exported model's logits differ from PyTorch's by ``error`` x their scale."""
    original = FORMATS[fmt]

    def load(path):
        run = original.load(path)

        def shifted(images):
            logits = run(images)
            return logits + error * max(1.0, float(np.abs(logits).max()))

        return shifted

    monkeypatch.setitem(FORMATS, fmt, dataclasses.replace(original, load=load))


def test_export_that_differs_from_pytorch_fails_naming_shape_difference_and_tolerance(
    demo_checkpoint, tmp_path, monkeypatch
):
    perturb(monkeypatch, "torchscript", 1e-3)
    path = tmp_path / "demo.torchscript.pt"
    with pytest.raises(LightsegError) as error:
        export(
            export_config(
                demo_checkpoint,
                "torchscript",
                f"output={path}",
                "check.batch_sizes=[1]",
                "check.image_sizes=[[64,64]]",
            )
        )
    message = str(error.value)
    sidecar = json.loads((tmp_path / "demo.torchscript.pt.json").read_text())
    parity = sidecar["parity"]
    assert parity["passed"] is False
    assert parity["error"] == pytest.approx(1e-3, rel=1e-3)  # the shift, relative to the scale
    assert parity["max_abs_diff"] == pytest.approx(1e-3 * max(1, parity["max_abs_logit"]), 1e-3)
    assert "does not match PyTorch" in message and "tolerance=0.0001" in message
    assert "input shape [1, 3, 64, 64]" in message
    assert f"by up to {parity['max_abs_diff']:.3g}, an error of 0.001" in message
    assert f"{parity['mask_disagreement']:.2%} of its pixels get another class" in message


def perturb_weights_after_export(monkeypatch, fmt: str, factor: float) -> None:
    """Scale the network's weight tensors by ``factor`` once the file is written: the export
    then computes the unperturbed model, PyTorch another one (a ViT's first tensor, its class
    token, alone would hardly change the logits)."""
    original = FORMATS[fmt]

    def save(model, example, path, level, opset):
        original.save(model, example, path, level, opset)
        with torch.no_grad():
            for parameter in model.net.parameters():
                parameter.mul_(factor)

    monkeypatch.setitem(FORMATS, fmt, dataclasses.replace(original, save=save))


def test_large_logits_pass_by_their_scale_and_a_changed_weight_fails(tmp_path, monkeypatch):
    """The README's case: a model whose logits are in the hundreds differs from onnxruntime by
    float32 rounding far above 1e-4 in absolute terms; relative to its scale it is a pass, while
    a weight changed by 1% after export is a failure with masks that disagree."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    ckpt = tiny_checkpoint(tmp_path / "loud.ckpt", ARCHITECTURES["unet"], ["bg", "fg"])
    checkpoint = torch.load(ckpt, weights_only=True)
    for name in ("weight", "bias"):  # logits 300x larger, as after a short run of training
        checkpoint["state_dict"][f"net.segmentation_head.0.{name}"] *= 300
    torch.save(checkpoint, ckpt)
    report = export(export_config(ckpt, "onnx", "check.batch_sizes=[1]"))
    parity = report["parity"]
    assert parity["passed"] and parity["error"] < 1e-4 and parity["mask_disagreement"] < 1e-3
    # float32 rounding far above the old absolute tolerance (1e-4), small against the logits
    assert parity["max_abs_diff"] > 1e-4 and parity["max_abs_logit"] > 100
    for check in parity["checks"]:
        assert check["error"] == check["max_abs_diff"] / check["max_abs_logit"]

    perturb_weights_after_export(monkeypatch, "onnx", 1.01)
    with pytest.raises(LightsegError, match="does not match PyTorch") as error:
        export(export_config(ckpt, "onnx", "check.batch_sizes=[1]"))
    sidecar = json.loads(Path(str(ckpt).replace(".ckpt", ".onnx.json")).read_text())
    assert sidecar["parity"]["error"] > 1e-3 and sidecar["parity"]["passed"] is False
    assert "of its pixels get another class" in str(error.value)


def test_dynamic_shapes_that_fail_fall_back_to_the_training_size(
    demo_checkpoint, tmp_path, monkeypatch, caplog
):
    original = FORMATS["torchscript"]

    def save(model, example, path, level, opset):
        if "height" in level.axes:
            raise RuntimeError("spatial size baked into the graph")
        original.save(model, example, path, level, opset)

    monkeypatch.setitem(FORMATS, "torchscript", dataclasses.replace(original, save=save))
    path = tmp_path / "demo.torchscript.pt"
    with caplog.at_level(logging.WARNING, logger="lightseg.tools.export"):
        report = export(export_config(demo_checkpoint, "torchscript", f"output={path}"))
    assert report["dynamic_axes"] == ["batch"]
    assert report["input"]["shape"] == ["N", 3, 64, 64]
    assert "spatial size baked" in report["fallback_reason"]
    assert [check["input"] for check in report["parity"]["checks"]] == [
        [1, 3, 64, 64],
        [3, 3, 64, 64],
    ]
    assert "only accepts inputs of shape [N, 3, 64, 64]" in caplog.text


def test_unknown_format_lists_the_available_ones():
    with pytest.raises(LightsegError, match="format='tflite' is unknown") as error:
        get_format("tflite")
    assert "Available: onnx, torchscript" in str(error.value)


def test_onnx_without_its_packages_says_which_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(LightsegError, match=r"onnxruntime is not installed.*\.\[export\]"):
        get_format("onnx")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(LightsegError, match="does not exist"):
        export(export_config(tmp_path / "missing.ckpt", "torchscript"))


def test_image_sizes_must_be_multiples_of_the_networks_input_multiple(demo_checkpoint, tmp_path):
    fpn = tiny_checkpoint(tmp_path / "fpn.ckpt", ARCHITECTURES["fpn"], ["bg", "fg"])
    with pytest.raises(LightsegError, match=r"multiples of 32 \(this network's input_multiple"):
        export(export_config(fpn, "torchscript", "check.image_sizes=[[64,70]]"))
    with pytest.raises(LightsegError, match=r"\[height, width\] pairs"):
        export(export_config(demo_checkpoint, "torchscript", "check.image_sizes=[64,64]"))


def test_segnet_traces_with_sizes_that_follow_the_input():
    """Index unpooling traces without baking in the sizes, odd ones included."""
    model = SegNet(out_channels=2).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, torch.rand(2, 3, 64, 64), check_trace=False)
        for shape in [(1, 3, 96, 128), (1, 3, 45, 67)]:
            images = torch.rand(shape)
            torch.testing.assert_close(traced(images), model(images), atol=0, rtol=0)


# --- Other architectures (slow: each builds and exports a full-size network) ---------------


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("arch", ["segnet", "lraspp", "deeplabv3plus"])
def test_other_architectures_export_with_dynamic_shapes(arch, fmt, tmp_path):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    ckpt = tiny_checkpoint(tmp_path / f"{arch}.ckpt", ARCHITECTURES[arch], ["bg", "a", "b"])
    report = export(export_config(ckpt, fmt))
    assert_parity(report, channels=3)
    assert report["dynamic_axes"] == ["batch", "height", "width"]
    assert report["input"]["sides_multiple_of"] == 32  # the check sizes test no finer sides
    assert report["binary"] is False and "softmax" in report["output"]["meaning"]


def test_output_may_be_a_folder_and_bad_paths_are_clear_errors(demo_checkpoint, demo_run, tmp_path):
    small = ("check.batch_sizes=[1]", "check.image_sizes=[[64,64]]")
    folder = tmp_path / "exports"
    folder.mkdir()
    report = export(export_config(demo_checkpoint, "torchscript", f"output={folder}", *small))
    assert report["path"] == str(folder / "best.torchscript.pt")
    assert (folder / "best.torchscript.pt.json").is_file()
    report = export(
        export_config(demo_checkpoint, "torchscript", f"output={tmp_path}/new/", *small)
    )
    assert report["path"] == str(tmp_path / "new" / "best.torchscript.pt")

    (tmp_path / "taken").write_text("a file")
    with pytest.raises(LightsegError, match=r"Cannot write the export to .*taken"):
        export(export_config(demo_checkpoint, "torchscript", f"output={tmp_path}/taken/m.pt"))
    with pytest.raises(LightsegError, match="is a folder; give a checkpoint file") as error:
        export(export_config(demo_run, "torchscript"))
    assert str(demo_run / "checkpoints" / "best.ckpt") in str(error.value)
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(LightsegError, match="Cannot read checkpoint"):
        export(export_config(tmp_path / "text.ckpt", "torchscript"))


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiments_checkpoint_exports_with_parity_trained_or_not(
    experiment, tmp_path, data_dir, monkeypatch
):
    """The parity rule passes a correct ONNX export and fails one whose weights differ by 1%,
    for each shipped experiment's network, after one training step and untrained."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    cfg = make_config(
        tmp_path,
        f"experiment={experiment}",
        *ONE_STEP,
        "data.image_size=[64,64]",
        "print_config=false",
        data_dir=data_dir,
    )
    train(cfg)
    trained = tmp_path / "run" / "checkpoints" / "best.ckpt"
    hparams = torch.load(trained, weights_only=True)["hyper_parameters"]
    torch.manual_seed(0)
    untrained = tiny_checkpoint(
        tmp_path / "untrained.ckpt", without_pretrained(hparams["model"]), hparams["classes"]
    )
    small = ("check.batch_sizes=[1]",)
    for ckpt in (trained, untrained):
        parity = export(export_config(ckpt, "onnx", *small))["parity"]
        assert parity["passed"] and parity["error"] < 1e-4, ckpt.name
    perturb_weights_after_export(monkeypatch, "onnx", 1.01)
    for ckpt in (trained, untrained):
        with pytest.raises(LightsegError, match="does not match PyTorch"):
            export(export_config(ckpt, "onnx", *small))

"""Export a trained checkpoint to ONNX or TorchScript, and check the export against PyTorch.

    python -m lightseg.tools.export ckpt_path=logs/demo/runs/<time>/checkpoints/best.ckpt
    make export CKPT=... FORMAT=torchscript

The graph takes float32 images ``[N, C, H, W]`` in 0..1 (the normalisation is inside it) and
returns logits ``[N, out_channels, H, W]``, divided by the ``make calibrate`` temperature when
one is stored (``temperature=1``: the raw logits). Batch and sides stay dynamic where the
architecture allows; otherwise it falls back to sides in multiples of 32, then the training size,
then batch 1, with a warning. The file is run next to PyTorch (:mod:`lightseg.tools.parity`); an
error above ``tolerance`` fails the command. A sidecar ``<file>.json`` describes input, output
and the check.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from lightseg import __version__
from lightseg.checkpoints import ModelInput, load_module, model_input, read_temperature
from lightseg.config import app, plain
from lightseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lightseg.errors import LightsegError, room_to_write
from lightseg.models import SegmentationModule
from lightseg.models.lora import merge_adapters
from lightseg.models.network import logits_of
from lightseg.tools.parity import Check, Level, Runner, compare, parity_report, print_parity
from lightseg.utils.console import console

log = logging.getLogger(__name__)

#: Logits this many tolerances off at other sizes only mean sizes baked into the graph.
BAKED_FACTOR = 10
#: Terminal colour codes, which torch's export errors contain.
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")


class ExportModel(nn.Module):
    """Normalisation and network in one graph: pixels in 0..1 -> logits / ``temperature``."""

    def __init__(self, module: SegmentationModule, temperature: float = 1.0) -> None:
        super().__init__()
        self.normalize, self.net, self.temperature = module.normalize, module.net, temperature
        self.eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = logits_of(self.net(self.normalize(image)))
        return logits if self.temperature == 1.0 else logits / self.temperature


@dataclass(frozen=True)
class Format:
    """How to write one export format and run the written file."""

    name: str
    suffix: str
    requires: tuple[str, ...]
    save: Callable[[nn.Module, torch.Tensor, Path, Level, int], None]
    load: Callable[[Path], Runner]
    runtime: Callable[[], str]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' warnings and logs: the parity check says whether it is right."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def save_onnx(model: nn.Module, example: torch.Tensor, path: Path, level: Level, opset: int):
    from torch.export import Dim

    dims = {0: Dim("batch", min=1)} if "batch" in level.axes else {}
    for axis, name in ((2, "height"), (3, "width")):
        if name in level.axes:  # sides in multiples of the level's (named e.g. 32*h in the graph)
            side = Dim(name[0], min=1)
            dims[axis] = level.multiple * side if level.multiple > 1 else side
    with quiet():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=True,  # the TorchScript-based exporter is deprecated
            dynamic_shapes=(dims,),
            input_names=["image"],
            output_names=["logits"],
            opset_version=opset,
            external_data=False,  # one self-contained file (lightseg's models are < 2 GB)
            verbose=False,
        )


def load_onnx(path: Path) -> Runner:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # fatal only: failed runs raise, and say why
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda images: session.run(["logits"], {"image": images})[0]


def save_torchscript(model: nn.Module, example: torch.Tensor, path: Path, level, opset) -> None:
    # One trace serves every size the traced code allows; the parity check finds out which.
    with quiet(), torch.no_grad():
        torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(path))


def load_torchscript(path: Path) -> Runner:
    with quiet():
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad(), quiet():
            return loaded(torch.from_numpy(images)).numpy()

    return run


FORMATS = {
    "onnx": Format(
        "onnx",
        ".onnx",
        ("onnx", "onnxscript", "onnxruntime"),
        save_onnx,
        load_onnx,
        lambda: f"onnxruntime {version('onnxruntime')} (CPUExecutionProvider)",
    ),
    "torchscript": Format(
        "torchscript",
        ".torchscript.pt",
        (),
        save_torchscript,
        load_torchscript,
        lambda: f"torch.jit {torch.__version__}",
    ),
}


def get_format(name: str) -> Format:
    """The export format ``name``, with its optional packages checked."""
    if name not in FORMATS:
        raise LightsegError(
            f"format='{name}' is unknown. Available: {', '.join(FORMATS)} "
            "(e.g. format=onnx or FORMAT=onnx with make)."
        )
    fmt = FORMATS[name]
    missing = [package for package in fmt.requires if importlib.util.find_spec(package) is None]
    if missing:
        raise LightsegError(
            f"format={name} needs {', '.join(fmt.requires)}, but {', '.join(missing)} "
            "is not installed. Install the export extra: pip install -e '.[export]' "
            "(or export with format=torchscript, which needs nothing more)."
        )
    return fmt


def export_and_compare(model: ExportModel, fmt: Format, path: Path, check: Check, opset: int):
    """Export at the most general level that works; returns it, the comparisons and why more
    general levels were dropped (None if none was). A level fails if its file cannot be written
    or run, or if its logits are right only at the next level's shapes (sizes baked in)."""
    levels, reasons, arch, takes = check.levels(), [], type(model.net).__name__, check.takes
    for index, level in enumerate(levels):
        example = torch.rand(level.example_batch, takes.channels, *takes.image_size)
        try:
            fmt.save(model, example, path, level, opset)
            results = compare(model, fmt.load(path), check.shapes_for(level), check)
        except Exception as error:  # whatever went wrong, a less general level may work
            while error.__cause__ is not None:  # exporters wrap the real error
                error = error.__cause__
            lines = ANSI_CODES.sub("", str(error)).strip().splitlines()  # say its first line
            reasons.append(f"{level}: {type(error).__name__}: {lines[0][:300] if lines else ''}")
            continue
        too_far = check.too_far(results)
        if too_far and index + 1 < len(levels):
            kept = check.shapes_for(levels[index + 1])
            worst = max(too_far, key=lambda r: r.error)
            baked = not worst.error <= BAKED_FACTOR * check.tolerance
            if baked and not any(r.shape in kept for r in too_far):
                reasons.append(
                    f"{level}: logits off by {worst.max_abs_diff:.3g} at "
                    f"{list(worst.shape)}, though right at {[list(s) for s in kept]}"
                )
                continue
        if reasons:
            shape = ", ".join(map(str, level.shape(takes.image_size, takes.channels)))
            log.warning(
                f"The {fmt.name} export of {arch} does not work with {levels[0]} "
                f"({'; '.join(reasons)}). Fell back to {level}: the file only accepts "
                f"inputs of shape [{shape}]."
            )
        return level, results, "; ".join(reasons) or None
    fixed = [1, takes.channels, *takes.image_size]
    raise LightsegError(
        f"Could not export {arch} to {fmt.name}, not even at a fixed input of {fixed} "
        f"({'; '.join(reasons)}). Try the other format "
        f"({', '.join(n for n in FORMATS if n != fmt.name)})."
    )


def output_path(ckpt_path: Path, fmt: Format, output: str | None) -> Path:
    """``output`` (a file, or a folder for ``<stem><suffix>``), or that file next to the
    checkpoint; its folder is created and probed, so a bad one fails before the export."""
    name = ckpt_path.stem + fmt.suffix
    path = Path(output) if output else ckpt_path.with_name(name)
    if path.is_dir() or (output and str(output).endswith(("/", os.sep))):
        path = path / name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.with_name(f".{path.name}.write-test")
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise LightsegError(
            f"Cannot write the export to '{path.parent}': {error.strerror}. Give a file in a "
            "folder you can write to: output=... ."
        ) from None
    return path


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` in ``cfg.format`` and check it; returns what the sidecar holds."""
    fmt = get_format(str(cfg.format))
    module = load_module(cfg.ckpt_path, "cpu")
    ckpt_path = Path(cfg.ckpt_path)
    merge_adapters(module.net)  # LoRA: the plain network, adapters folded into its weights
    takes = model_input(module)
    check = Check.from_config(
        plain(cfg.get("check")) or {}, takes, module.task.out_channels, float(cfg.tolerance)
    )
    path = output_path(ckpt_path, fmt, cfg.get("output"))
    temperature = export_temperature(ckpt_path, cfg.get("temperature", "auto"))
    model = ExportModel(module, temperature)
    with console.status(f"Exporting {ckpt_path.name} to {fmt.name} ..."):
        level, results, fallback = export_and_compare(model, fmt, path, check, int(cfg.opset))

    report = {
        "format": fmt.name,
        "file": path.name,
        "checkpoint": str(ckpt_path),
        **describe(module, level, takes, temperature),
        "fallback_reason": fallback,
        "opset": int(cfg.opset) if fmt.name == "onnx" else None,
        "parity": parity_report(results, check, fmt.runtime()),
    }
    sidecar = path.with_name(path.name + ".json")
    with room_to_write(sidecar.parent, sidecar.name):  # the folder was probed: a full disk
        sidecar.write_text(json.dumps(report, indent=2))
    print_parity(report, str(level))
    too_far = check.too_far(results)
    if too_far:
        worst = max(too_far, key=lambda r: r.error)
        others = [list(r.shape) for r in too_far if r is not worst]
        raise LightsegError(
            f"The {fmt.name} export does not match PyTorch: at input shape {list(worst.shape)} "
            f"its logits differ by up to {worst.max_abs_diff:.3g}, an error of "
            f"{worst.error:.3g} (difference / max(1, largest logit {worst.max_abs_logit:.3g})), "
            f"above tolerance={check.tolerance:g}"
            + (f" (also too far at {others})" if others else "")
            + f"; {worst.mask_disagreement:.2%} of its pixels get another class. {path} and "
            f"{sidecar.name} (parity.passed=false) are kept for inspection. If an error of "
            "this size is acceptable for your model, raise tolerance=...; otherwise try the "
            "other format or another opset."
        )
    console.print(f"Exported [bold]{path}[/] and {sidecar.name}")
    return {**report, "path": str(path)}


def export_temperature(ckpt_path: Path, chosen: Any) -> float:
    """``temperature``: auto (the stored one, 1 if none) or a number > 0."""
    if chosen in (None, "auto"):
        return read_temperature(ckpt_path)
    try:
        temperature = float(chosen)
    except (TypeError, ValueError):
        temperature = float("nan")
    if not 0 < temperature < float("inf"):
        raise LightsegError(
            f"temperature={chosen} must be a number > 0, or auto (the one make calibrate "
            "stored beside the checkpoint, else 1)."
        )
    return temperature


def describe(module: SegmentationModule, level: Level, takes: ModelInput, temperature: float):
    """The sidecar's description of the exported model: what goes in, what comes out."""
    task = module.task
    norm = module.hparams.get("normalization") or {"mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    meaning = (
        "foreground logit: sigmoid > 0.5 (logit > 0) is the foreground class"
        if task.binary
        else "one logit per class: softmax over dim 1, argmax is the class index"
    )
    if temperature != 1.0:
        meaning += (
            f"; already divided by the temperature {temperature:g} (make calibrate), so the "
            "probabilities are the calibrated ones"
        )
    return {
        "model": plain(module.hparams.model),
        "classes": list(task.classes),
        "binary": task.binary,
        "training_image_size": list(takes.image_size) if takes.stored else None,
        "input": {
            "name": "image",
            "dtype": "float32",
            "shape": level.shape(takes.image_size, takes.channels),
            "channels": takes.channels,
            "layout": f"NCHW, {takes.channels} channel(s) in the order training read them "
            "(RGB for colour images), values in 0..1",
            "scaling": "8-bit pixels / 255, 16-bit / 65535, float as they are",
            "normalization": "inside the graph: (image - mean) / std"
            + (", clamped to [-clip, clip]" if norm.get("clip") else ""),
            "mean": list(norm["mean"]),
            "std": list(norm["std"]),
            "clip": norm.get("clip"),
            "sides_multiple_of": level.multiple if "height" in level.axes else None,
        },
        "temperature": temperature,
        "output": {
            "name": "logits",
            "dtype": "float32",
            "shape": level.shape(takes.image_size, task.out_channels),
            "meaning": meaning,
        },
        "dynamic_axes": list(level.axes),
        "network_input_multiple": takes.multiple,
        "versions": {"lightseg": __version__, "torch": torch.__version__},
    }


@app("export")
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()

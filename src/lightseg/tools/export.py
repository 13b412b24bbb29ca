"""Export a trained checkpoint to ONNX or TorchScript, and check the export against PyTorch.

    python -m lightseg.tools.export ckpt_path=logs/demo/runs/<time>/checkpoints/best.ckpt
    make export CKPT=... FORMAT=torchscript

The exported model takes float32 RGB images ``[N, 3, H, W]`` scaled to 0..1 (the checkpoint's
normalisation is inside the graph) and returns logits ``[N, out_channels, H, W]``; H and W are
multiples of 32. Batch and spatial size stay dynamic where the architecture allows; where it
does not, the export falls back to the training size (then batch 1) with a warning.

After writing ``<stem>.onnx`` or ``<stem>.torchscript.pt`` (next to the checkpoint by default),
the file is loaded back (onnxruntime / ``torch.jit.load``) and run next to PyTorch on random
inputs of several batch and image sizes; any max absolute logit difference above ``tolerance``
is an error. A sidecar ``<file>.json`` describes the input and output and records the check.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from rich.table import Table
from torch import nn

from lightseg import CONFIG_DIR, __version__
from lightseg.config import plain
from lightseg.errors import LightsegError, user_errors
from lightseg.models import SegmentationModule, input_multiple
from lightseg.models.network import logits_of
from lightseg.tools.inference import DEFAULT_IMAGE_SIZE, load_module, stored_image_size
from lightseg.utils.console import console

log = logging.getLogger(__name__)

#: Exported graphs take image sides in multiples of this (the output stride of most encoders).
STRIDE = 32
#: Dynamic axes to try, most general first; the first that works is kept (export_and_compare).
DYNAMIC_LEVELS = (("batch", "height", "width"), ("batch",), ())
#: Logits this many tolerances off at other sizes, but right at the export's own, mean the
#: sizes were baked into the graph (not float32 noise): the export falls back to fixed sizes.
BAKED_FACTOR = 10
#: Terminal colour codes, which torch's export errors contain.
ANSI_CODES = re.compile(r"\x1b\[[0-9;]*m")


class ExportModel(nn.Module):
    """Normalisation and network in one graph: RGB in 0..1 -> logits at the input size."""

    def __init__(self, module: SegmentationModule) -> None:
        super().__init__()
        self.normalize = module.normalize  # float 0..1 in: the training normalisation
        self.net = module.net
        self.eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits, _ = logits_of(self.net(self.normalize(image)))
        return logits


Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Format:
    """How to write one export format and run the written file."""

    name: str
    suffix: str
    requires: tuple[str, ...]
    save: Callable[[nn.Module, torch.Tensor, Path, Sequence[str], int], None]
    load: Callable[[Path], Runner]
    runtime: Callable[[], str]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the exporters' warnings and log lines (deprecations, tracer and opset notes):
    the parity check, not their commentary, says whether the export is right."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def save_onnx(model: nn.Module, example: torch.Tensor, path: Path, axes, opset: int) -> None:
    from torch.export import Dim

    dims = {}
    if "batch" in axes:
        dims[0] = Dim("batch", min=1)
    for axis, name, symbol in ((2, "height", "h"), (3, "width", "w")):
        if name in axes:  # smp encoders downsample 5 times: sides are multiples of 32
            dims[axis] = STRIDE * Dim(symbol, min=1)  # named 32*h, 32*w in the graph
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


def save_torchscript(model: nn.Module, example: torch.Tensor, path: Path, axes, opset) -> None:
    # Tracing records shapes as they flow, so one trace serves every size the code allows;
    # the parity check finds out which sizes that is.
    with quiet(), torch.no_grad():
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def load_torchscript(path: Path) -> Runner:
    with quiet():
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(images: np.ndarray) -> np.ndarray:
        with torch.no_grad(), quiet():
            return loaded(torch.from_numpy(images)).numpy()

    return run


def _version(package: str) -> str:
    return importlib.import_module(package).__version__


FORMATS = {
    "onnx": Format(
        "onnx",
        ".onnx",
        ("onnx", "onnxscript", "onnxruntime"),
        save_onnx,
        load_onnx,
        lambda: f"onnxruntime {_version('onnxruntime')} (CPUExecutionProvider)",
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
    missing = []
    for package in fmt.requires:
        try:
            importlib.import_module(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise LightsegError(
            f"format={name} needs {', '.join(fmt.requires)}, but {', '.join(missing)} "
            "is not installed. Install the export extra: pip install -e '.[export]' "
            "(or export with format=torchscript, which needs nothing more)."
        )
    return fmt


@dataclass(frozen=True)
class Check:
    """What the parity check runs: every (batch, image size) pair, at one seed and tolerance."""

    shapes: tuple[tuple[int, int, int, int], ...]
    training_size: tuple[int, int]
    channels: int
    tolerance: float
    seed: int = 0

    @classmethod
    def from_config(cls, check: dict, training_size, channels: int, tolerance: float) -> Check:
        try:
            sizes = [
                (int(h), int(w))
                for h, w in check.get("image_sizes") or default_sizes(training_size)
            ]
        except (TypeError, ValueError):
            raise LightsegError(
                f"check.image_sizes={check.get('image_sizes')} must be a list of [height, width] "
                "pairs, e.g. check.image_sizes=[[256,256],[288,320]] (configs/export.yaml)."
            ) from None
        batches = [int(b) for b in check.get("batch_sizes") or (1, 3)]
        bad = [list(size) for size in sizes if min(size) < STRIDE or any(s % STRIDE for s in size)]
        if bad or min(batches) < 1 or tolerance < 0:
            raise LightsegError(
                f"check.image_sizes={[list(s) for s in sizes]}, check.batch_sizes={batches} and "
                f"tolerance={tolerance:g}: image sides must be multiples of {STRIDE} (not {bad}), "
                "batch sizes >= 1 and the tolerance >= 0 (configs/export.yaml)."
            )
        shapes = tuple((b, 3, h, w) for b in batches for h, w in sizes)
        return cls(shapes, training_size, channels, tolerance, int(check.get("seed", 0)))

    def shapes_for(self, axes: Sequence[str]) -> list[tuple[int, int, int, int]]:
        """The check shapes an export with dynamic ``axes`` accepts (at least its own)."""
        batch = example_batch(axes)
        kept = [
            s
            for s in self.shapes
            if ("batch" in axes or s[0] == batch)
            and ("height" in axes or s[2:] == self.training_size)
        ]
        return kept or [(batch, 3, *self.training_size)]

    def too_far(self, results: list[Comparison]) -> list[Comparison]:
        return [r for r in results if not r.max_abs_diff <= self.tolerance]  # NaN is too far


def default_sizes(size: Sequence[int]) -> list[tuple[int, int]]:
    """The training size, and one taller and wider by different amounts (catches H/W swaps)."""
    height, width = size
    return [(height, width), (height + STRIDE, width + 2 * STRIDE)]


def example_batch(axes: Sequence[str]) -> int:
    """Batch size of the example input: not 1 where it is dynamic, or export would fix it."""
    return 2 if "batch" in axes else 1


@dataclass(frozen=True)
class Comparison:
    shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    max_abs_diff: float


def compare(model: nn.Module, run: Runner, shapes, check: Check) -> list[Comparison]:
    """Run the export and PyTorch on the same random images; raise if the export fails to run
    or returns the wrong shape (its sizes did not follow the input)."""
    generator = torch.Generator().manual_seed(check.seed)
    results = []
    for shape in shapes:
        images = torch.rand(shape, generator=generator)
        with torch.no_grad():
            expected = model(images).numpy()
        got = np.asarray(run(images.numpy()))
        if got.shape != (shape[0], check.channels, *shape[2:]):
            raise RuntimeError(f"output shape {list(got.shape)} for input {list(shape)}")
        results.append(Comparison(shape, got.shape, float(np.abs(got - expected).max())))
    return results


def export_and_compare(
    model: ExportModel, fmt: Format, path: Path, check: Check, opset: int
) -> tuple[tuple[str, ...], list[Comparison], str | None]:
    """Export with the most dynamic axes that work; returns them, the comparisons and why
    more dynamic axes were dropped (None if they were not).

    Dynamic axes do not work if the export fails to be written, to run or to give the right
    output shape, or if its logits are right at the shapes a less dynamic export accepts but
    far off (``BAKED_FACTOR`` x tolerance) at the others: sizes baked into the graph. Smaller
    misses, or misses everywhere, are numerical, and fewer dynamic axes would not fix them:
    those results are returned as they are.
    """
    reasons = []
    for index, axes in enumerate(DYNAMIC_LEVELS):
        example = torch.rand(example_batch(axes), 3, *check.training_size)
        try:
            fmt.save(model, example, path, axes, opset)
            results = compare(model, fmt.load(path), check.shapes_for(axes), check)
        except Exception as error:  # whatever went wrong, fewer dynamic axes may work
            reasons.append(f"{_axes_text(axes)}: {_root_cause(error)}")
            continue
        too_far = check.too_far(results)
        if too_far and index + 1 < len(DYNAMIC_LEVELS):
            kept = check.shapes_for(DYNAMIC_LEVELS[index + 1])
            worst = max(too_far, key=lambda r: r.max_abs_diff)
            baked = not worst.max_abs_diff <= BAKED_FACTOR * check.tolerance
            if baked and not any(r.shape in kept for r in too_far):
                reasons.append(
                    f"{_axes_text(axes)}: logits off by {worst.max_abs_diff:.3g} at "
                    f"{list(worst.shape)}, though right at {[list(s) for s in kept]}"
                )
                continue
        if reasons:
            log.warning(
                "The %s export of %s does not work with %s (%s). Fell back to %s: the file "
                "only accepts inputs of shape %s.",
                fmt.name,
                _arch(model),
                _axes_text(DYNAMIC_LEVELS[0]),
                "; ".join(reasons),
                _axes_text(axes),
                "[" + ", ".join(map(str, _shape(axes, check.training_size, 3))) + "]",
            )
        return axes, results, "; ".join(reasons) or None
    raise LightsegError(
        f"Could not export {_arch(model)} to {fmt.name}, not even at a fixed input of "
        f"[1, 3, {check.training_size[0]}, {check.training_size[1]}] ({'; '.join(reasons)}). "
        f"Try the other format ({', '.join(n for n in FORMATS if n != fmt.name)})."
    )


def _root_cause(error: BaseException) -> str:
    """``Type: first line`` of the innermost cause (exporters wrap the real error)."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = ANSI_CODES.sub("", str(error)).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"


def _axes_text(axes: Sequence[str]) -> str:
    return "dynamic " + ", ".join(axes) if axes else "a fixed input shape"


def _shape(axes: Sequence[str], size: Sequence[int], channels: int) -> list:
    """A shape for people: N, H and W where the axis is dynamic."""
    n = "N" if "batch" in axes else example_batch(axes)
    h, w = ("H", "W") if "height" in axes else size
    return [n, channels, h, w]


def _arch(model: ExportModel) -> str:
    return type(model.net).__name__


def output_path(ckpt_path: Path, fmt: Format, output: str | None) -> Path:
    """``output``, or ``<stem><suffix>`` next to the checkpoint."""
    path = Path(output) if output else ckpt_path.with_name(ckpt_path.stem + fmt.suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.ckpt_path`` in ``cfg.format`` and check it; returns what the sidecar holds."""
    fmt = get_format(str(cfg.format))
    ckpt_path = Path(cfg.ckpt_path)
    module = load_module(ckpt_path, "cpu")
    stored = stored_image_size(module)
    training_size = stored or DEFAULT_IMAGE_SIZE
    if any(side % STRIDE for side in training_size) or STRIDE % input_multiple(module.net):
        raise LightsegError(
            f"The export traces image sides in multiples of {STRIDE}, but the checkpoint's "
            f"training size is {list(training_size)} and its network needs multiples of "
            f"{input_multiple(module.net)}. Export a model trained at a size that is a multiple "
            f"of {STRIDE}."
        )
    check = Check.from_config(
        plain(cfg.get("check")) or {}, training_size, module.task.out_channels, float(cfg.tolerance)
    )
    path = output_path(ckpt_path, fmt, cfg.get("output"))
    model = ExportModel(module)
    with console.status(f"Exporting {ckpt_path.name} to {fmt.name} ..."):
        axes, results, fallback = export_and_compare(model, fmt, path, check, int(cfg.opset))

    report = describe(module, fmt, path, ckpt_path, axes, training_size if stored else None)
    report["fallback_reason"] = fallback
    report["opset"] = int(cfg.opset) if fmt.name == "onnx" else None
    too_far = check.too_far(results)
    report["parity"] = {
        "runtime": fmt.runtime(),
        "tolerance": check.tolerance,
        "passed": not too_far,
        "max_abs_diff": max(r.max_abs_diff for r in results),
        "checks": [
            {"input": list(r.shape), "output": list(r.output_shape), "max_abs_diff": r.max_abs_diff}
            for r in results
        ],
    }
    sidecar = sidecar_path(path)
    sidecar.write_text(json.dumps(report, indent=2))
    print_parity(report)
    if too_far:
        worst = max(too_far, key=lambda r: r.max_abs_diff)
        others = [list(r.shape) for r in too_far if r is not worst]
        raise LightsegError(
            f"The {fmt.name} export does not match PyTorch: at input shape {list(worst.shape)} "
            f"its logits differ by up to {worst.max_abs_diff:.3g}, above "
            f"tolerance={check.tolerance:g}"
            + (f" (also too far at {others})" if others else "")
            + f". {path} and {sidecar.name} (parity.passed=false) are kept for inspection. If a "
            "difference of this size is acceptable for your model, raise tolerance=...; "
            "otherwise try the other format or another opset."
        )
    console.print(f"Exported [bold]{path}[/] and {sidecar.name}")
    return {**report, "path": str(path)}


def describe(
    module: SegmentationModule,
    fmt: Format,
    path: Path,
    ckpt_path: Path,
    axes: Sequence[str],
    training_size: Sequence[int] | None,
) -> dict[str, Any]:
    """The sidecar's description of the exported file: what goes in, what comes out."""
    task, norm = module.task, module.hparams.normalization
    size = training_size or DEFAULT_IMAGE_SIZE
    return {
        "format": fmt.name,
        "file": path.name,
        "checkpoint": str(ckpt_path),
        "model": plain(module.hparams.model),
        "classes": list(task.classes),
        "binary": task.binary,
        "training_image_size": list(training_size) if training_size else None,
        "input": {
            "name": "image",
            "dtype": "float32",
            "shape": _shape(axes, size, 3),
            "layout": "NCHW, RGB, values in 0..1",
            "normalization": "inside the graph: (image - mean) / std",
            "mean": list(norm["mean"]),
            "std": list(norm["std"]),
            "sides_multiple_of": STRIDE,
        },
        "output": {
            "name": "logits",
            "dtype": "float32",
            "shape": _shape(axes, size, task.out_channels),
            "meaning": (
                "foreground logit: sigmoid > 0.5 (logit > 0) is the foreground class"
                if task.binary
                else "one logit per class: softmax over dim 1, argmax is the class index"
            ),
        },
        "dynamic_axes": list(axes),
        "versions": {"lightseg": __version__, "torch": torch.__version__},
    }


def print_parity(report: dict) -> None:
    parity = report["parity"]
    table = Table(
        title=f"{report['format']} vs PyTorch: max |logit difference|",
        caption=f"tolerance {parity['tolerance']:g} · {parity['runtime']} · "
        + _axes_text(report["dynamic_axes"]),
    )
    table.add_column("input shape")
    table.add_column("output shape")
    table.add_column("max abs diff", justify="right")
    table.add_column("", justify="center")
    for check in parity["checks"]:
        ok = check["max_abs_diff"] <= parity["tolerance"]
        table.add_row(
            str(check["input"]),
            str(check["output"]),
            f"{check['max_abs_diff']:.2e}",
            "[green]ok[/]" if ok else "[red]too far[/]",
        )
    console.print(table)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="export")
def hydra_main(cfg: DictConfig) -> None:
    with user_errors():
        export(cfg)


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()

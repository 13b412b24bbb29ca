"""Does an exported model compute what PyTorch computes? The check ``make export`` runs.

Both run on the same random images of every configured shape the export accepts. The error,
``max |export - PyTorch| / max(1, max |PyTorch|)``, is relative to the logits' scale because
float32 rounding grows with it (trained logits reach hundreds); above ``tolerance`` the export
fails. The share of pixels whose class differs is reported too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from rich.table import Column, Table
from torch import nn

from lightseg.checkpoints import ModelInput
from lightseg.errors import LightsegError
from lightseg.utils.console import console

#: Side multiple to fall back to (most encoders' output stride); the default check sizes' step.
COARSE = 32
ALL_AXES = ("batch", "height", "width")
RULE = "max |export - pytorch| / max(1, max |pytorch logit|) <= tolerance, at every input shape"

#: A comparison's numbers, as the sidecar reports them (each check's, and the worst).
STATS = ("error", "max_abs_diff", "max_abs_logit", "mask_disagreement")

Runner = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Level:
    """How general an export is: its dynamic ``axes``, dynamic sides in this ``multiple``."""

    axes: tuple[str, ...]
    multiple: int

    @property
    def example_batch(self) -> int:
        """Batch size of the example input: not 1 where it is dynamic, or export would fix it."""
        return 2 if "batch" in self.axes else 1

    def __str__(self) -> str:
        if not self.axes:
            return "a fixed input shape"
        sides = f" (sides x{self.multiple})" if self.multiple > 1 and "height" in self.axes else ""
        return "dynamic " + ", ".join(self.axes) + sides

    def shape(self, size: Sequence[int], channels: int) -> list:
        """A shape for people: N, H and W where the axis is dynamic."""
        h, w = ("H", "W") if "height" in self.axes else size
        return ["N" if "batch" in self.axes else self.example_batch, channels, h, w]


def default_sizes(size: Sequence[int], multiple: int) -> list[tuple[int, int]]:
    """The training size, one taller and wider by different amounts (catches H/W swaps) and,
    for networks that take sides finer than 32, one in the finest multiple they take."""
    height, width = size
    step = multiple * math.ceil(COARSE / multiple)
    sizes = [(height, width), (height + step, width + 2 * step)]
    if multiple < COARSE and COARSE % multiple == 0:
        sizes.append((height + multiple, width + 3 * multiple))
    return sizes


@dataclass(frozen=True)
class Comparison:
    shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    max_abs_diff: float
    max_abs_logit: float
    mask_disagreement: float  # share of pixels whose predicted class differs

    @property
    def error(self) -> float:
        return self.max_abs_diff / max(1.0, self.max_abs_logit)


@dataclass(frozen=True)
class Check:
    """What the parity check runs: every (batch, image size) pair, at one seed and tolerance."""

    shapes: tuple[tuple[int, int, int, int], ...]
    takes: ModelInput
    out_channels: int
    tolerance: float
    seed: int = 0

    @classmethod
    def from_config(cls, check: dict, takes: ModelInput, out_channels: int, tolerance: float):
        multiple = takes.multiple
        try:
            sizes = [
                (int(h), int(w))
                for h, w in check.get("image_sizes") or default_sizes(takes.image_size, multiple)
            ]
        except (TypeError, ValueError):
            raise LightsegError(
                f"check.image_sizes={check.get('image_sizes')} must be a list of [height, width] "
                "pairs, e.g. check.image_sizes=[[256,256],[288,320]] (configs/export.yaml)."
            ) from None
        batches = [int(b) for b in check.get("batch_sizes") or (1, 3)]
        bad = [list(s) for s in sizes if min(s) < multiple or any(x % multiple for x in s)]
        if bad or min(batches) < 1 or not tolerance >= 0:
            raise LightsegError(
                f"check.image_sizes={[list(s) for s in sizes]}, check.batch_sizes={batches} and "
                f"tolerance={tolerance:g}: image sides must be multiples of {multiple} (this "
                f"network's input_multiple; not {bad}), batch sizes >= 1 and the tolerance >= 0 "
                "(configs/export.yaml)."
            )
        shapes = tuple((b, takes.channels, h, w) for b in batches for h, w in sizes)
        return cls(shapes, takes, out_channels, tolerance, int(check.get("seed", 0)))

    def levels(self) -> list[Level]:
        """Most general first: dynamic sides in the network's multiple, then in multiples of 32
        (alone where no check size is finer), then a dynamic batch, then a fixed shape."""
        multiple, size = self.takes.multiple, self.takes.image_size
        coarse = multiple < COARSE and COARSE % multiple == 0 and not any(s % COARSE for s in size)
        fine = any(side % COARSE for shape in self.shapes for side in shape[2:])
        levels = [Level(ALL_AXES, multiple)] if fine or not coarse else []
        levels += [Level(ALL_AXES, COARSE)] if coarse else []
        return [*levels, Level(("batch",), multiple), Level((), multiple)]

    def shapes_for(self, level: Level) -> list[tuple[int, int, int, int]]:
        """The check shapes an export at ``level`` accepts (at least its own)."""
        size, batch, sides = self.takes.image_size, level.example_batch, "height" in level.axes
        kept = [
            s
            for s in self.shapes
            if ("batch" in level.axes or s[0] == batch)
            and (not any(side % level.multiple for side in s[2:]) if sides else s[2:] == size)
        ]
        return kept or [(batch, self.takes.channels, *size)]

    def too_far(self, results: list[Comparison]) -> list[Comparison]:
        return [r for r in results if not r.error <= self.tolerance]  # NaN is too far


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
        if got.shape != (shape[0], check.out_channels, *shape[2:]):
            raise RuntimeError(f"output shape {list(got.shape)} for input {list(shape)}")
        binary = check.out_channels == 1  # binary: the logit's sign; else the argmax
        differ = (got > 0) != (expected > 0) if binary else got.argmax(1) != expected.argmax(1)
        diff, scale = float(np.abs(got - expected).max()), float(np.abs(expected).max())
        results.append(Comparison(shape, got.shape, diff, scale, float(differ.mean())))
    return results


def parity_report(results: list[Comparison], check: Check, runtime: str) -> dict:
    """The sidecar's ``parity`` entry."""
    return {
        "runtime": runtime,
        "rule": RULE,
        "tolerance": check.tolerance,
        "passed": not check.too_far(results),
        **{stat: max(getattr(r, stat) for r in results) for stat in STATS},
        "checks": [
            {"input": list(r.shape), "output": list(r.output_shape)}
            | {stat: getattr(r, stat) for stat in STATS}
            for r in results
        ],
    }


def print_parity(report: dict, how: str) -> None:
    parity = report["parity"]
    numbers = ("max abs diff", "max |logit|", "error", "masks differ")
    table = Table(
        "input shape",
        "output shape",
        *(Column(name, justify="right") for name in numbers),
        Column("", justify="center"),
        title=f"{report['format']} vs PyTorch: logits and masks",
        caption=f"error = max abs diff / max(1, max |logit|) <= tolerance {parity['tolerance']:g}"
        f" · {parity['runtime']} · {how}",
    )
    for check in parity["checks"]:
        ok = check["error"] <= parity["tolerance"]
        table.add_row(
            str(check["input"]),
            str(check["output"]),
            f"{check['max_abs_diff']:.2e}",
            f"{check['max_abs_logit']:.3g}",
            f"{check['error']:.2e}",
            f"{check['mask_disagreement']:.3%}",
            "[green]ok[/]" if ok else "[red]too far[/]",
        )
    console.print(table)

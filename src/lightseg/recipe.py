"""A recipe that plans itself (nnU-Net's idea, for 2D): the training split's fingerprint decides
the input size, batch size, normalisation, loss, augmentations, schedule, learning rate and
checkpoint rule, as Hydra overrides a researcher can read and override line by line.

    make plan EXP=demo                      writes plan.yaml (lines, reasons, fingerprint)
    make train EXP=demo ARGS="recipe=auto"  plans (or reads recipe.plan=<plan.yaml>) and trains

:func:`plan` is a plain function of the fingerprint, the budget (``recipe.budget``) and what
the network needs (:func:`network_info`); README "A recipe that plans itself" has every rule.
The plan's overrides go BELOW the command line's: a key given there is not planned (the plan
records it under ``overridden``).
"""

from __future__ import annotations

import copy
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from lightseg import CONFIG_DIR
from lightseg.config import app, plain
from lightseg.data.leakage import hashes, pairs
from lightseg.data.source import read_pair
from lightseg.data.transforms import pixel_scale
from lightseg.errors import LightsegError
from lightseg.lr_find import lr_find
from lightseg.models.network import (
    build_network,
    input_multiple,
    logits_of,
    takes,
    without_pretrained,
)
from lightseg.utils.console import console

#: Sources whose images have no "up" (flips and rotations are free); others are kept upright.
ORIENTATION_FREE = {"PH2", "Demo"}
LOW, HIGH = 0.5, 99.5  # percentiles of the robust scaling of 16-bit and float images
SKEWED = 10.0  # largest / smallest class share above which cross-entropy weights classes
SMALL_OBJECT = 0.02  # median foreground share of an image below which resizing loses objects
#: Groups the plan chooses: a command line that chooses one also keeps the plan's keys under it.
GROUPS = ("loss", "optimizer", "scheduler")
PLAN_FILE = "plan.yaml"  # make plan's default, and the plan a run trained with, in its folder


@dataclass(frozen=True)
class Fingerprint:
    """What the training split looks like (sizes as [height, width], values in [0, 1] units)."""

    source: str
    images: int
    size_median: list[int]
    size_range: list[list[int]]  # smallest and largest image by area
    aspect_range: list[float]  # width / height
    channels: int
    dtype: str
    mean: list[float]
    std: list[float]
    percentiles: list[list[float]]  # per channel [LOW, HIGH]
    classes: list[str]
    shares: list[float]  # of the labelled pixels
    presence: list[float]  # share of images that contain the class
    foreground: list[float]  # foreground share of an image: 10th, 50th, 90th percentile
    duplicates: int | None  # near-duplicate pairs in the split (make data's hashes), if hashed
    orientation_free: bool


def fingerprint(datamodule, orientation_free: bool | None = None, limit: int = 400) -> Fingerprint:
    """The training split's fingerprint; pixel values from up to ``limit`` evenly spaced images,
    mean/std/class counts from lightseg's cached statistics of the whole split."""
    train = datamodule.locate()["train"]
    stats = datamodule.statistics()
    sizes, fg, values, dtype = [], [], [], None
    for sample in train[:: max(1, math.ceil(len(train) / limit))]:
        image, mask = read_pair(datamodule.source, sample)
        sizes.append(image.shape[:2])
        dtype = image.dtype
        labelled = mask < len(stats.classes)
        fg.append(float(((mask > 0) & labelled).sum() / max(labelled.sum(), 1)))
        flat = image.reshape(-1, image.shape[-1] if image.ndim == 3 else 1)
        values.append(flat[:: max(1, flat.shape[0] // 4096)] / pixel_scale(image.dtype))
    by_area = sorted(sizes, key=lambda s: s[0] * s[1])
    aspects = [w / h for h, w in sizes]
    pixels = np.concatenate(values)
    name = type(datamodule.source).__name__
    found = hashes(datamodule.source, train, datamodule.cache_dir, compute=False)
    return Fingerprint(
        source=name,
        images=stats.images,
        size_median=[int(np.median([s[0] for s in sizes])), int(np.median([s[1] for s in sizes]))],
        size_range=[list(map(int, by_area[0])), list(map(int, by_area[-1]))],
        aspect_range=[round(min(aspects), 3), round(max(aspects), 3)],
        channels=datamodule.in_channels,
        dtype=str(dtype),
        mean=list(stats.mean),
        std=list(stats.std),
        percentiles=np.percentile(pixels, [LOW, HIGH], axis=0).T.round(5).tolist(),
        classes=list(stats.classes),
        shares=[round(s, 5) for s in stats.shares],
        presence=[round(n / stats.images, 4) for n in stats.class_images],
        foreground=np.percentile([f for f in fg if f > 0] or [0.0], [10, 50, 90]).round(4).tolist(),
        duplicates=None if found is None else len(pairs(found)),
        orientation_free=name in ORIENTATION_FREE if orientation_free is None else orientation_free,
    )


def network_info(model: dict, in_channels: int, out_channels: int) -> dict[str, Any]:
    """The network's ``input_multiple`` and, on a GPU, its memory per 256x256 image: a probe
    forward/backward at batch 1 and 2, extrapolated linearly (activations grow with pixels)."""
    config = without_pretrained(model)
    if "in_channels" not in config and takes(config["_target_"], "in_channels"):
        config["in_channels"] = in_channels
    network = build_network(config, out_channels)
    info = {"input_multiple": input_multiple(network), "gb_per_image": None, "gb_fixed": None}
    if not torch.cuda.is_available():
        return info
    network, peaks = network.cuda().train(), []
    for batch in (1, 2):
        torch.cuda.reset_peak_memory_stats()
        images = torch.randn(batch, in_channels, 256, 256, device="cuda")
        logits_of(network(images)).float().mean().backward()
        peaks.append(torch.cuda.max_memory_allocated() / 2**30)
        network.zero_grad(set_to_none=True)
    per_image = max(peaks[1] - peaks[0], 1e-3) * 1.2  # optimizer state and fragmentation: +20 %
    return {**info, "gb_per_image": per_image, "gb_fixed": peaks[0] - per_image / 1.2}


def plan(fp: Fingerprint, budget: dict, network: dict) -> list[dict[str, Any]]:
    """The plan: ``[{key, value, reason}]``, one Hydra override per line (rules: README)."""
    lines: list[dict[str, Any]] = []

    def line(key: str, value: Any, reason: str) -> None:
        lines.append({"key": key, "value": value, "reason": reason})

    # 1. Input size: the median image, aspect kept unless near square, capped, network multiple
    multiple, cap = int(network["input_multiple"]), int(budget.get("max_side") or 512)
    height, width = fp.size_median
    square = 0.8 <= width / height <= 1.25
    if square:
        height = width = math.sqrt(height * width)
    scale = min(1.0, cap / max(height, width))
    size = [max(multiple, round(side * scale / multiple) * multiple) for side in (height, width)]
    why = "square (median aspect within 0.8-1.25)" if square else "median aspect kept"
    line(
        "data.image_size",
        size,
        f"median image {fp.size_median}, {why}, longer side <= "
        f"recipe.budget.max_side={cap}, sides multiples of the network's {multiple}",
    )
    # 2. Resize or crop, and the augmentations the data allows
    (h0, w0), (h1, w1) = fp.size_range
    spread = (h1 * w1) / max(h0 * w0, 1)
    eight_bit_rgb = fp.channels == 3 and fp.dtype == "uint8"
    small = fp.foreground[1] < SMALL_OBJECT and max(fp.size_median) > 2 * max(size)
    if eight_bit_rgb and (small or spread > 4):
        transforms = "scale_crop_flip"
        why = "random scale and crop at full resolution: " + (
            f"objects are small (median {fp.foreground[1]:.1%} of an image)"
            if small
            else f"image areas differ {spread:.1f}x"
        )
    elif not eight_bit_rgb:
        transforms = "resize_hflip_bands"
        why = f"resize; {fp.channels} channel(s) of {fp.dtype}: no colour jitter, h-flip only"
    elif fp.orientation_free:
        transforms = "resize_flip"
        why = f"resize; {fp.source} has no 'up': flips, 45 degree rotations, colour jitter"
    else:
        transforms = "resize_hflip"
        why = f"resize; {fp.source} is kept upright: horizontal flip, +-10 degrees"
    line("data/transforms", transforms, why)
    # 3. Batch size: measured memory per image against recipe.budget.memory_gb
    memory = float(budget.get("memory_gb") or 8)
    most = max(2, fp.images // 4)  # at least 4 steps per epoch
    if network.get("gb_per_image"):
        per_image = network["gb_per_image"] * size[0] * size[1] / 256**2
        batch = int((memory - network["gb_fixed"]) / per_image)
        why = f"probe: {per_image:.2f} GB per image at {size}, {memory:g} GB budget"
    else:
        batch = 8
        why = "no GPU to measure on: 8, the hand recipes' batch"
    batch = max(2, min(batch, 32, most))
    line("data.batch_size", batch, f"{why}; within 2-32 and <= images/4 ({most})")
    # 4. Normalisation
    if fp.dtype == "uint8":
        line("data.mean", fp.mean, "8-bit: the training split's per-channel mean")
        line("data.std", fp.std, "8-bit: the training split's per-channel std")
    else:
        low, high = np.array(fp.percentiles).T
        line(
            "data.mean",
            ((low + high) / 2).round(6).tolist(),
            f"{fp.dtype}: robust scaling, the {LOW}-{HIGH} percentiles map to -1..1",
        )
        line("data.std", np.maximum((high - low) / 2, 1e-6).round(6).tolist(), "(half the range)")
        line("data.clip", 1.0, "values beyond those percentiles are clipped to them")
    # 5. Loss: cross-entropy + Dice; classes weighted when their shares are skewed
    line("loss", "ce_dice", "cross-entropy for calibrated pixels + Dice for the overlap scored")
    present = [s for s in fp.shares if s > 0]
    skew = max(present) / min(present) if present else 1.0
    if skew > SKEWED and len(fp.classes) > 2:
        line(
            "loss.ce.term.class_weights",
            "median",
            f"class shares differ {skew:.0f}x (> {SKEWED:g}): median-frequency weights",
        )
    elif skew > SKEWED:
        weight = round(min(math.sqrt(fp.shares[0] / max(fp.shares[1], 1e-9)), 10.0), 2)
        line(
            "loss.ce.term.pos_weight",
            weight,
            f"foreground is {fp.shares[1]:.1%} of the pixels: sqrt(bg/fg), at most 10",
        )
    # 6. Schedule: one cycle over recipe.budget.steps, as whole epochs
    steps = int(budget.get("steps") or 1000)
    per_epoch = max(1, fp.images // batch)
    epochs = max(1, math.ceil(steps / per_epoch))
    line("scheduler", "onecycle", "warm-up then cosine annealing: robust from scratch")
    line(
        "trainer.max_epochs",
        epochs,
        f"recipe.budget.steps={steps} at {per_epoch} steps per epoch ({fp.images} images)",
    )
    # 7. Learning rate (recipe.lr_find=true: :func:`range_test` replaces it)
    lr = float(f"{2e-3 * math.sqrt(batch / 8):.2g}")
    line("optimizer", "adamw", "AdamW, decoupled weight decay")
    line("optimizer.lr", lr, "one-cycle peak 2e-3 at batch 8 (the PH2 recipe), x sqrt(batch/8)")
    # 8. Checkpoint rule
    line("monitor", "val/dice", "best validation Dice (the score tested), checked every epoch")
    line("monitor_mode", "max", "higher Dice is better")
    return lines


def as_override(entry: dict[str, Any]) -> str:
    """``key=value`` in Hydra's override grammar (lists as [a,b], floats unrounded)."""
    value = entry["value"]
    text = "[" + ",".join(map(str, value)) + "]" if isinstance(value, list) else str(value)
    return f"{entry['key']}={text}"


def key_of(override: str) -> str:
    """The key an override sets: ``++data.batch_size=4`` -> ``data.batch_size``."""
    return override.split("=", 1)[0].lstrip("+~").replace("/", ".")


def settings(cfg: DictConfig) -> dict[str, Any]:
    """``cfg.recipe`` (configs/recipe/auto.yaml) as plain data, defaults where absent."""
    default = OmegaConf.load(Path(CONFIG_DIR) / "recipe" / "auto.yaml")
    return plain(OmegaConf.merge(default, cfg.get("recipe") or {}))


def make_plan(cfg: DictConfig, overrides: list[str], compose, folder: Path) -> dict[str, Any]:
    """Fingerprint the training split of ``cfg``'s data and plan (what plan.yaml holds); a
    range test (``recipe.lr_find``) writes its curve to ``folder``."""
    recipe = settings(cfg)
    datamodule = instantiate(cfg.data, _convert_="all")
    fp = fingerprint(datamodule, recipe.get("orientation_free"))
    info = network_info(plain(cfg.model), fp.channels, datamodule.task.out_channels)
    lines = plan(fp, recipe["budget"], info)
    if recipe.get("lr_find") and "optimizer.lr" not in {key_of(o) for o in overrides}:
        lines = range_test(lines, compose([*map(as_override, lines), *overrides]), folder)
    return {"lines": lines, "fingerprint": asdict(fp)}


def range_test(lines: list[dict[str, Any]], planned: DictConfig, folder: Path) -> list[dict]:
    """``lines`` with the learning rate of Lightning's range test (``make lr-find``'s, with
    configs/lr_find.yaml's settings) on the ``planned`` config; its curve goes to ``folder``."""
    tested = copy.deepcopy(planned)
    with open_dict(tested):
        default = OmegaConf.load(Path(CONFIG_DIR) / "lr_find.yaml").lr_find
        tested.lr_find = OmegaConf.merge(default, planned.get("lr_find") or {})  # +lr_find.*
        tested.paths.output_dir = str(folder)
        tested.logger = tested.callbacks = tested.data.split_dir = None  # not a run to record
    suggestion = lr_find(tested)["suggestion"]
    ruled = next(e for e in lines if e["key"] == "optimizer.lr")
    if suggestion is None:
        reason = f"{ruled['reason']}; the range test (recipe.lr_find) gave no suggestion"
        found = {**ruled, "reason": reason}
    else:
        reason = (
            f"range test (recipe.lr_find=true, {folder}/lr_find.png): steepest fall of the "
            f"loss; the rule gave {ruled['value']}"
        )
        found = {**ruled, "value": float(f"{suggestion:.2g}"), "reason": reason}
    return [found if e is ruled else e for e in lines]


def read_plan(path: str | Path) -> dict[str, Any]:
    try:
        planned = yaml.safe_load(Path(path).read_text())
        assert isinstance(planned["lines"], list)
        return planned
    except (OSError, yaml.YAMLError, KeyError, TypeError, AssertionError) as error:
        raise LightsegError(
            f"recipe.plan={path} is not a plan ({type(error).__name__}: {error}). Write one with "
            "make plan EXP=<experiment>, or leave recipe.plan=null to plan at the start of the run."
        ) from None


def with_plan(cfg: DictConfig, overrides: list[str], compose) -> DictConfig:
    """``cfg`` with the plan's overrides under the command line's (``compose(overrides)``
    composes the config again); the plan, fingerprint and overridden keys go to ``cfg.recipe``.
    The plan is ``recipe.plan``, else the one a continued run was started with, else new."""
    recipe = cfg.get("recipe")
    if not recipe or not recipe.get("auto"):
        return cfg
    saved = Path(cfg.paths.output_dir) / PLAN_FILE
    if recipe.get("plan") or saved.is_file():
        planned = read_plan(recipe.get("plan") or saved)
    else:
        planned = make_plan(cfg, overrides, compose, saved.parent / "lr_find")
    given = {key_of(o) for o in overrides}
    chosen = tuple(f"{g}." for g in given if g in GROUPS)
    kept = [
        e
        for e in planned["lines"]
        if key_of(e["key"]) not in given and not key_of(e["key"]).startswith(chosen)
    ]
    composed = compose([*map(as_override, kept), *overrides])
    with open_dict(composed):
        composed.recipe.applied = [as_override(e) for e in kept]
        composed.recipe.overridden = [e["key"] for e in planned["lines"] if e not in kept]
        composed.recipe.lines = planned["lines"]
        composed.recipe.fingerprint = planned["fingerprint"]
    return composed


@app("train")
def main(cfg: DictConfig) -> None:
    """``make plan``: write the plan to ``recipe.plan`` (default plan.yaml) and show it."""
    from rich.table import Table

    overrides, name = list(HydraConfig.get().overrides.task), HydraConfig.get().job.config_name
    path = Path(settings(cfg).get("plan") or PLAN_FILE)  # a range test's curve: beside it
    planned = make_plan(cfg, overrides, lambda o: compose(name, o), path.parent / "lr_find")
    path.write_text(yaml.safe_dump(planned, sort_keys=False, width=100))
    table = Table("override", "why", title=f"Plan of {cfg.name} ({path})")
    for entry in planned["lines"]:
        table.add_row(as_override(entry), entry["reason"])
    console.print(table)
    folder = Path(cfg.paths.output_dir)  # planning is not a run: no folder of its own
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= {".hydra", "recipe.log"}:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Segment new images with a trained checkpoint.

    python -m lightseg.tools.predict ckpt_path=best.ckpt input=photos/ output=masks/
    make predict CKPT=best.ckpt INPUT=photos/ OUTPUT=masks/ ARGS="effect=color-splash"

For every image: ``<name>_mask.png`` (class indices in a palette PNG: viewers show colours,
readers get indices), ``<name>_overlay.png``, with ``probabilities=true`` and a binary model
``<name>_prob.png``, and with ``effect=background|color-splash`` ``<name>_<effect>.png``.
``recursive=true`` also reads subfolders. Images of any size are read upright (EXIF orientation
applied); files that cannot be read are skipped, counted and listed at the end.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import numpy as np
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image, ImageOps, UnidentifiedImageError
from rich.progress import track

from lightseg import CONFIG_DIR
from lightseg.config import plain
from lightseg.errors import LightsegError, user_errors
from lightseg.tools.effects import EFFECTS, apply_effect, background_pixels
from lightseg.tools.inference import build_segmenter, load_module
from lightseg.utils.console import console
from lightseg.utils.devices import inference_device
from lightseg.visualize import class_colors, overlay, palette_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


@dataclass
class PredictionSummary:
    written: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    images: int = 0


def input_images(path: Path, recursive: bool = False) -> list[Path]:
    """The image files ``path`` names: itself, or the images in the folder (and subfolders)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise LightsegError(f"input='{path}' does not exist: give an image file or a folder.")
    candidates = path.rglob("*") if recursive else path.iterdir()
    files = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        where = "or its subfolders" if recursive else "(add recursive=true for subfolders)"
        raise LightsegError(
            f"input folder '{path}' {where} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})."
        )
    return files


def read_upright(path: Path) -> np.ndarray:
    """uint8 RGB [H, W, 3], turned as the camera's EXIF orientation says."""
    with Image.open(path) as image:
        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def output_names(files: list[Path]) -> dict[Path, str]:
    """``photo`` for photo.jpg, or ``photo.jpg`` where two inputs share a stem."""
    stems = Counter(f.stem for f in files)
    return {f: f.stem if stems[f.stem] == 1 else f.name for f in files}


def predict(cfg: DictConfig) -> PredictionSummary:
    """Write the prediction files for ``cfg.input`` into ``cfg.output``."""
    effect = cfg.get("effect")
    if effect is not None and effect not in EFFECTS:
        raise LightsegError(f"Unknown effect '{effect}'. Available: {', '.join(EFFECTS)}.")
    module = load_module(cfg.ckpt_path, inference_device(str(cfg.get("device", "auto"))))
    files = input_images(Path(cfg.input), bool(cfg.get("recursive", False)))
    segmenter = build_segmenter(module, plain(cfg.get("inference")))
    crf = instantiate(cfg.postprocess) if cfg.get("postprocess") else None
    task = module.task
    background = cfg.background if isinstance(cfg.background, str) else list(cfg.background)
    if effect == "background":
        background_pixels(background, (1, 1))  # a bad colour or file fails before any work
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    colors = class_colors()
    summary = PredictionSummary()
    names = output_names(files)
    for path in track(files, description=f"Predicting {len(files)} image(s)", console=console):
        try:
            image = read_upright(path)
        except (UnidentifiedImageError, OSError, ValueError) as error:
            summary.skipped.append((path, str(error).splitlines()[0][:120]))
            continue
        probabilities = segmenter(image)
        if crf is not None:
            probabilities = crf(image, probabilities)
        mask = probabilities.argmax(0).astype(np.uint8)
        files_out = {
            "mask": palette_image(mask),
            "overlay": Image.fromarray(overlay(image, mask, colors, float(cfg.alpha))),
        }
        foreground = 1.0 - probabilities[0]  # binary: the class; multiclass: any non-background
        if cfg.get("probabilities") and task.binary:
            files_out["prob"] = Image.fromarray(np.round(foreground * 255).astype(np.uint8))
        if effect is not None:
            result = apply_effect(effect, image, foreground, background, float(cfg.feather))
            files_out[effect] = Image.fromarray(result)
        for kind, picture in files_out.items():
            target = output / f"{names[path]}_{kind}.png"
            picture.save(target)
            summary.written.append(target)
        summary.images += 1
    report(summary, output)
    return summary


def report(summary: PredictionSummary, output: Path) -> None:
    console.print(
        f"Predicted {summary.images} image(s); wrote {len(summary.written)} file(s) to "
        f"[bold]{output}[/]."
    )
    if summary.skipped:
        console.print(f"[yellow]Skipped {len(summary.skipped)} unreadable file(s):[/]")
        for path, why in summary.skipped:
            console.print(f"  {path}: {why}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    with user_errors():
        predict(cfg)


def main() -> None:
    hydra_main()


if __name__ == "__main__":
    main()

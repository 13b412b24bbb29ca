"""Segment new images with a trained checkpoint.

    python -m lightseg.tools.predict ckpt_path=best.ckpt input=photos/ output=masks/
    make predict CKPT=best.ckpt INPUT=photos/ OUTPUT=masks/ ARGS="effect=color-splash"
    make predict CKPT=a.ckpt,b.ckpt INPUT=... OUTPUT=...     (an ensemble, as make eval takes)

Writes ``<name>_mask.png`` and ``<name>_overlay.png`` per image, and on request the foreground
probability, 16-bit probability and uncertainty ``maps`` and portrait effects (README.md). Images
are read as training reads them; a 3-channel model also takes grayscale, RGBA and palette images.
Unreadable files are skipped and listed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image, ImageOps, UnidentifiedImageError
from rich.progress import track

from lightseg.config import app, plain
from lightseg.data.pixels import TIFF_SUFFIXES, read_image
from lightseg.data.source import listing
from lightseg.errors import LightsegError, disk_full, no_room
from lightseg.tools.effects import EFFECTS, Backdrop, apply_effect, background_pixels
from lightseg.tools.inference import load_segmenter
from lightseg.tools.uncertainty import normalized_entropy
from lightseg.utils.console import console
from lightseg.utils.devices import inference_device
from lightseg.visualize import class_colors, display_image, overlay, palette_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
#: PIL modes of 16-bit and float grayscale images, which an RGB conversion would clip.
DEEP_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
KINDS = {1: " (grayscale)", 2: " (grayscale + alpha)", 3: " (RGB)", 4: " (RGBA or 4 bands)"}
#: ``maps`` options: what each 16-bit map of an image's probabilities [C, H, W] holds.
MAPS = {
    "probability": lambda p: p[1] if len(p) == 2 else p.max(0),
    "uncertainty": lambda p: normalized_entropy(torch.from_numpy(p)).numpy(),
}
#: What reading a file that is no (complete) image raises.
UNREADABLE = (OSError, ValueError, IndexError, UnidentifiedImageError, Image.DecompressionBombError)


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
    try:
        files = image_files(path, recursive)
        nested = [] if files or recursive else image_files(path, True)
    except OSError as error:
        raise LightsegError(f"Cannot list input folder '{path}': {error.strerror}.") from None
    if not files:
        where = "or its subfolders " if recursive else ""
        hint = f" Its subfolders hold {len(nested)}: add recursive=true." if nested else ""
        raise LightsegError(
            f"input folder '{path}' {where}holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})."
            + hint
        )
    return files


def image_files(folder: Path, recursive: bool) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def channels_in(path: Path) -> int:
    """How many channels :func:`read_image` finds in ``path``, from the file's header."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        with tifffile.TiffFile(path) as tiff:
            shape, axes = tiff.series[0].shape, tiff.series[0].axes
        return 1 if len(shape) == 2 else shape[0] if axes[1:] == "YX" else shape[-1]
    with Image.open(path) as image:
        return 3 if image.mode in ("P", "CMYK", "YCbCr") else len(image.getbands())


def read_input(path: Path, channels: int) -> np.ndarray:
    """Pixels ``[H, W, channels]`` as training reads ``path``; an error says why it is skipped."""
    try:
        found = channels_in(path)
        if found == channels:
            return read_image(path, channels)
        tiff = path.suffix.lower() in TIFF_SUFFIXES
        if channels == 3 and (found == 1 or (found in (2, 4) and not tiff)):
            # grayscale or RGBA as RGB: grey repeated (any bit depth), alpha dropped
            if not tiff:
                with Image.open(path) as image:
                    if image.mode not in DEEP_GRAY_MODES:
                        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
            return np.repeat(read_image(path, 1), 3, axis=2)
    except LightsegError as error:  # training's reader names the problem; its advice is
        raise LightsegError(str(error).split(". ")[0]) from None  # for datasets: cut
    except UNREADABLE as error:
        raise LightsegError(f"not a readable image ({type(error).__name__}: {error})") from None
    raise LightsegError(
        f"{found} channel(s){KINDS.get(found, '')}, but the model takes {channels} (the "
        "channels of the images it was trained on)"
    )


def output_names(files: list[Path]) -> dict[Path, str]:
    """``photo`` for photo.jpg, or ``photo.jpg`` where two inputs share a stem."""
    stems = Counter(f.stem for f in files)
    return {f: f.stem if stems[f.stem] == 1 else f.name for f in files}


def output_folder(path: Path) -> Path:
    """``path``, created if missing and probed, so a bad one fails before any prediction."""
    if path.exists() and not path.is_dir():
        raise LightsegError(
            f"output='{path}' is a file; give a folder for the predictions (created if missing)."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".lightseg-write-test"
        probe.touch()
        probe.unlink()
    except OSError as error:
        raise LightsegError(
            f"Cannot write to output folder '{path}': {error.strerror}. Give a folder you can "
            "write to: output=... ."
        ) from None
    return path


def backdrop(background) -> Backdrop:
    """``background`` as an RGB colour or a uint8 RGB picture (read as an RGB model's input)."""
    if not isinstance(background, str):
        background_pixels(background, (1, 1))  # a bad colour fails before any work
        return background
    path = Path(background)
    if not path.is_file():
        raise LightsegError(
            f"background='{background}' is neither an RGB colour like [0,255,0] nor an "
            "existing image file."
        )
    try:
        return display_image(read_input(path, 3))
    except LightsegError as error:
        raise LightsegError(
            f"background='{background}' cannot be used as a picture: {error}. Give an RGB or "
            "grayscale image file, or a colour like [0,255,0]."
        ) from None


def predict(cfg: DictConfig) -> PredictionSummary:
    """Write the prediction files for ``cfg.input`` into ``cfg.output``."""
    effect, threshold, feather = cfg.get("effect"), cfg.get("threshold"), cfg.get("feather")
    if effect is not None and effect not in EFFECTS:
        raise LightsegError(f"Unknown effect '{effect}'. Available: {', '.join(EFFECTS)}.")
    if threshold is not None and not 0 < float(threshold) < 1:
        raise LightsegError(f"threshold={threshold} must be between 0 and 1 (or null: soft).")
    if not float(feather) >= 0:
        raise LightsegError(f"feather={feather} must be >= 0 pixels (0: a hard edge).")
    if not 0 <= float(cfg.alpha) <= 1:
        raise LightsegError(f"alpha={cfg.alpha} (the overlay's opacity) must be in 0..1.")
    maps = plain(cfg.get("maps")) or []
    maps = [maps] if isinstance(maps, str) else list(maps)
    if unknown := [m for m in maps if m not in MAPS]:
        raise LightsegError(
            f"maps={maps}: unknown map(s) {unknown}; choose among {list(MAPS)} (e.g. "
            "maps=[probability,uncertainty]), or maps=[] for none."
        )
    device = inference_device(str(cfg.get("device", "auto")))
    segmenter = load_segmenter(plain(cfg.ckpt_path), device, plain(cfg.get("inference")))
    if cfg.get("probabilities") and not segmenter.task.binary:
        raise LightsegError(
            "probabilities=true writes the foreground probability of binary models; this model "
            f"has {segmenter.task.num_classes} classes. Leave probabilities=false."
        )
    files = input_images(Path(cfg.input), bool(cfg.get("recursive", False)))
    crf = instantiate(cfg.postprocess) if cfg.get("postprocess") else None
    background = backdrop(cfg.background) if effect == "background" else None
    created = not Path(cfg.output).exists()
    output = output_folder(Path(cfg.output))
    colors, names = class_colors(), output_names(files)
    summary = PredictionSummary()
    for path in track(files, description=f"Predicting {len(files)} image(s)", console=console):
        try:
            image = read_input(path, segmenter.input.channels)
        except LightsegError as error:
            summary.skipped.append((path, str(error)))
            continue
        probabilities = segmenter(image)
        shown = image if image.dtype == np.uint8 and image.shape[-1] == 3 else display_image(image)
        if crf is not None:
            probabilities = crf(shown, probabilities)
        mask = probabilities.argmax(0).astype(np.uint8)
        files_out = {
            "mask": palette_image(mask),
            "overlay": Image.fromarray(overlay(shown, mask, colors, float(cfg.alpha))),
        }
        foreground = 1.0 - probabilities[0]  # binary: the class; multiclass: any non-background
        if cfg.get("probabilities"):
            files_out["prob"] = Image.fromarray(np.round(foreground * 255).astype(np.uint8))
        for name in maps:  # 0..1 as 0..65535 (PIL writes uint16 as 16-bit grayscale PNG)
            values = np.clip(np.asarray(MAPS[name](probabilities), np.float64), 0.0, 1.0)
            files_out[name] = Image.fromarray(np.round(values * 65535).astype(np.uint16))
        if effect is not None:
            picture = apply_effect(effect, shown, foreground, background, float(feather), threshold)
            files_out[effect] = Image.fromarray(picture)
        for kind, picture in files_out.items():
            target = output / f"{names[path]}_{kind}.png"
            try:
                picture.save(target)
            except OSError as error:
                target.unlink(missing_ok=True)  # a part of a picture is no picture
                if disk_full(error):
                    fix = f" or choose another output=... ({len(summary.written)} file(s) kept)"
                    raise no_room(output, f"'{target.name}'", fix=fix) from None
                raise LightsegError(
                    f"Cannot write '{target}': {error.strerror or error}. The "
                    f"{len(summary.written)} file(s) written before it are kept; free space or "
                    "choose another output=... ."
                ) from None
            summary.written.append(target)
        summary.images += 1
    skipped = [f"{path}: {why}" for path, why in summary.skipped]
    if not summary.images:
        if created:
            output.rmdir()  # nothing was predicted: leave no empty folder behind
        raise LightsegError(
            f"No image of input='{Path(cfg.input)}' could be predicted; every file was skipped: "
            f"{listing(skipped, separator='; ')}. Give images this model can read: the file "
            "types and channel count it was trained on."
        )
    console.print(
        f"Predicted {summary.images} image(s); wrote {len(summary.written)} file(s) to "
        f"[bold]{output}[/]."
    )
    if skipped:
        console.print(f"[yellow]Skipped {len(skipped)} file(s):[/]")
        for line in skipped:
            console.print(f"  {line}", soft_wrap=True, markup=False)
    return summary


@app("predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    main()

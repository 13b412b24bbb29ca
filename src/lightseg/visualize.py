"""Pictures of masks: class colours, overlays, prediction grids, palette PNGs and plots, shared
by the validation-overlay callback, ``eval`` and ``predict``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from lightseg.data.transforms import pixel_scale
from lightseg.task import IGNORE_INDEX

GAP = 2  # white pixels between panels


def class_colors() -> np.ndarray:
    """RGB colour per mask value 0..255: each index's bits dealt out over the high bits of R, G
    and B, so neighbouring indices differ clearly; 0 (background) is black."""
    index, colors = np.arange(256, dtype=np.uint8), np.zeros((256, 3), np.uint8)
    for bit in range(3):  # bit 3 * bit + channel of the index -> bit 7 - bit of the channel
        for channel in range(3):
            colors[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return colors


def overlay(image: np.ndarray, mask: np.ndarray, colors: np.ndarray, alpha: float) -> np.ndarray:
    """Blend class colours into ``image`` (uint8 HxWx3) wherever ``mask`` is not background."""
    out = image.astype(np.float32)
    shown = mask != 0
    out[shown] = (1 - alpha) * out[shown] + alpha * colors[mask[shown]].astype(np.float32)
    return np.round(out).astype(np.uint8)


def overlay_grid(
    images: np.ndarray,
    truths: np.ndarray,
    predictions: np.ndarray,
    classes: Sequence[str],
    alpha: float = 0.5,
) -> np.ndarray:
    """One row per sample: image | truth overlay | prediction overlay; a legend underneath."""
    colors = class_colors()
    rows = [
        _join([image, *(overlay(image, mask, colors, alpha) for mask in masks)], axis=1)
        for image, *masks in zip(images, truths, predictions, strict=True)
    ]
    grid = _join(rows, axis=0)
    line = 14  # legend underneath: a header, then a line per class, "ignore" last
    entries = [(name, colors[i]) for i, name in enumerate(classes) if i != 0]
    entries.append(("ignore", colors[IGNORE_INDEX]))
    top = grid.shape[0] + 2
    canvas = Image.new("RGB", (grid.shape[1], top + line * (len(entries) + 1) + 2), "white")
    canvas.paste(Image.fromarray(grid), (0, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((2, top), "columns: image | truth | prediction", fill="black")
    for row, (name, color) in enumerate(entries, start=1):
        y = top + row * line
        draw.rectangle((2, y + 2, 11, y + 11), fill=tuple(int(c) for c in color))
        draw.text((16, y), name, fill="black")
    return np.asarray(canvas)


def _join(parts: list[np.ndarray], axis: int) -> np.ndarray:
    shape = list(parts[0].shape)
    shape[axis] = GAP
    gap = np.full(shape, 255, np.uint8)
    return np.concatenate([x for part in parts for x in (gap, part)][1:], axis=axis)


def display_image(image: np.ndarray) -> np.ndarray:
    """An image as a source reads it ([H, W, C] of 8-bit, 16-bit or float pixels): uint8 RGB.
    One channel is shown as gray; of more than three (spectral bands), the first three."""
    pixels = image.reshape(*image.shape[:2], -1).astype(np.float32) / pixel_scale(image.dtype)
    pixels = pixels[..., :3] if pixels.shape[-1] >= 3 else np.repeat(pixels[..., :1], 3, -1)
    return np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8)


def palette_image(mask: np.ndarray) -> Image.Image:
    """A palette image of ``mask``'s class indices: viewers show the class colours, readers get
    the indices back unchanged (as with VOC's own masks)."""
    image = Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="P")
    image.putpalette(class_colors().reshape(-1).tolist())
    return image


def letterbox(image: np.ndarray, size: int) -> np.ndarray:
    """Scale ``image`` to fit ``size`` x ``size``, padded with zeros: masks (HxW) by nearest
    neighbours, keeping their class indices; images (HxWxC) as uint8 RGB (:func:`display_image`)."""
    if image.ndim == 3:
        image = display_image(image)
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if image.ndim == 2 else Image.Resampling.BILINEAR
    resized = np.asarray(Image.fromarray(image).resize(new, resample))
    out = np.zeros((size, size, *image.shape[2:]), dtype=image.dtype)
    out[: resized.shape[0], : resized.shape[1]] = resized
    return out


def confusion_figure(confusion: np.ndarray, classes: Sequence[str], title: str):
    """Row-normalised confusion matrix (rows: true class) as a plain matplotlib ``Figure``, not
    pyplot's: no display needed, the caller's backend left alone, freed like any object."""
    from matplotlib.figure import Figure

    counts = np.asarray(confusion, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(classes)
    side = min(16, 2.5 + 0.45 * n)
    figure = Figure(figsize=(side, side * 0.9))
    axes = figure.subplots()
    shown = axes.imshow(normalised, vmin=0, vmax=1, cmap="Blues")
    figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
    axes.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    axes.set_xticklabels(classes, rotation=60 if n > 4 else 0, ha="right" if n > 4 else "center")
    axes.set_yticklabels(classes)
    if n <= 25:
        for (row, column), value in np.ndenumerate(normalised):
            ink = "white" if value > 0.5 else "black"
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=8, color=ink)
    figure.tight_layout()
    return figure


def reliability_figure(curves: dict[str, dict], title: str):
    """Reliability diagram: per confidence bin, the share of pixels predicted right against their
    mean confidence, one line per variant (``curves``: name -> ``PixelCalibration.bins()``),
    with the diagonal (perfect calibration) and underneath the pixel count per bin (log scale):
    a gap in a bin with few pixels matters little to the ECE."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 6.5))
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    for index, (name, bins) in enumerate(curves.items()):
        edges = np.asarray(bins["edges"], dtype=np.float64)
        count = np.asarray(bins["count"], dtype=np.float64)
        filled = count > 0
        confidence = np.asarray(bins["confidence"], dtype=np.float64)[filled]
        accuracy = np.asarray(bins["accuracy"], dtype=np.float64)[filled]
        top.plot(confidence, accuracy, marker="o", markersize=3, label=name)
        width = (edges[1] - edges[0]) / max(1, len(curves))
        bottom.bar(edges[:-1] + index * width, count, width=width, align="edge", label=name)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy (share of pixels right)", title=title)
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="confidence (largest class probability)", ylabel="pixels", yscale="log")
    figure.tight_layout()
    return figure

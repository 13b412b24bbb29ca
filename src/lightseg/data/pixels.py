"""Pixels of your own files (``data=folder``): images of any channel count and bit depth (TIFF
bands last or first), and masks read by the README's rules (Train on your own data), checked on
every file, never guessed: colours through ``palette``, else class indices, or for two classes
0/1 or 0/255 (foreground >= 128), the first mask by id that tells those apart deciding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import ImageOps

from lightseg.data.source import BINARY_THRESHOLD, check_labels, open_image, threshold_binary
from lightseg.errors import LightsegError
from lightseg.task import IGNORE_INDEX

log = logging.getLogger(__name__)

TIFF_SUFFIXES = (".tif", ".tiff")


def read_image(path: Path, channels: int) -> np.ndarray:
    """Pixels ``[H, W, channels]`` as uint8, uint16 or float32."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        pixels = read_tiff(path)
    else:
        image = ImageOps.exif_transpose(open_image(path))  # as predict reads photos
        if image.mode in ("P", "CMYK", "YCbCr"):
            image = image.convert("RGB")
        pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    found = pixels.shape[-1]
    if found != channels:
        kind = {1: " (grayscale)", 3: " (RGB)", 4: " (RGBA or 4 bands)"}.get(found, "")
        raise LightsegError(
            f"Image '{path}' has {found} channel(s){kind}, but data.source.in_channels="
            f"{channels}: every image must have the same number of channels. Convert the images "
            f"that differ, or set data.source.in_channels={found} if all of them have {found} (the "
            "network follows it; set data.mean=auto data.std=auto unless you give one value "
            "per channel)."
        )
    return pixel_type(pixels, path)


class MaskReader:
    """Mask files -> class indices ``[H, W]`` uint8 (255 = ignore), by the module's rules."""

    def __init__(
        self,
        classes: tuple[str, ...],
        palette: Sequence[Sequence[int]] | None = None,
        ignore_color: Sequence[int] | None = None,
    ) -> None:
        self.classes, self.binary = classes, len(classes) == 2
        self.palette = None if palette is None else check_palette(palette, classes)
        self.ignore_color = None if ignore_color is None else colour(ignore_color, "ignore_color")
        if self.palette is not None and self.ignore_color in self.palette:
            raise LightsegError(
                f"data.source.ignore_color={list(self.ignore_color)} is also a class colour in "
                "data.source.palette: give the pixels to ignore a colour of their own."
            )
        self.encoding: tuple[str, Path] | None = None  # binary: ("0/1" | "0/255", decided by)

    @property
    def decided(self) -> bool:
        """Only binary masks without a palette need :meth:`detect` before they can be read."""
        return self.palette is not None or not self.binary or self.encoding is not None

    def read(self, path: Path) -> np.ndarray:
        """Class indices ``[H, W]`` uint8 (255 = ignore)."""
        values, indexed = read_mask_values(path, colours=self.palette is not None)
        if self.palette is not None:
            if values.ndim != 3:
                raise LightsegError(
                    f"Mask '{path}' has one value per pixel, but data.source.palette is set, so "
                    "masks must be colour images. Mixed mask encodings: save every mask the same "
                    "way, or remove data.source.palette to read the values as class indices."
                )
            return self.map_colours(values, path)
        values = single_channel(values, path)
        if not self.binary:
            return self.indices(values, path)
        encoding, decided_by = self.encoding  # detect() has run: see decided
        kind = binary_kind(values, indexed, path)
        if kind not in (None, encoding):
            raise LightsegError(
                f"Mixed mask encodings: '{path}' is a {kind} mask (values "
                f"{np.unique(values).tolist()[:8]}), but '{decided_by}' made this dataset's masks "
                f"{encoding}. Save every mask the same way: 0/1 (1 = foreground, 255 = ignore) "
                "or 0/255 (255 = foreground)."
            )
        if encoding == "0/1":
            return self.indices(values, path)
        hint = (
            "If it holds class indices, name every class in data.source.classes; check that "
            "images and masks are not swapped."
        )
        return threshold_binary(values, path, "Mask", hint)

    def indices(self, values: np.ndarray, path: Path) -> np.ndarray:
        fix = (
            f"data.source.classes names {len(self.classes)} classes: name every class there, in "
            "index order; if the masks are colour images, set data.source.palette instead."
        )
        return check_labels(values, len(self.classes), path, fix).astype(np.uint8)

    def map_colours(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        """Each palette colour becomes its class index, ``ignore_color`` becomes 255."""
        codes = colour_codes(rgb[..., :3])
        unique, inverse = np.unique(codes, return_inverse=True)
        table = {code: index for index, code in enumerate(colour_codes(np.array(self.palette)))}
        if self.ignore_color is not None:
            table[int(colour_codes(np.array(self.ignore_color)))] = IGNORE_INDEX
        mapped = np.array([table.get(int(code), -1) for code in unique])
        unmapped = unique[mapped < 0]
        if unmapped.size:
            shares = np.bincount(inverse.ravel(), minlength=unique.size)[mapped < 0] / codes.size
            shown = ", ".join(
                f"{list(int(unmapped[i]).to_bytes(3, 'big'))} ({shares[i]:.1%} of pixels)"
                for i in np.argsort(-shares)[:5]
            )
            raise LightsegError(
                f"Mask '{path}' has {unmapped.size} colour(s) that are not in data.source.palette: "
                f"{shown}. Add each class colour to data.source.palette (in the order of "
                "data.source.classes), or set data.source.ignore_color for pixels to ignore. "
                "Masks saved as JPEG get new colours at edges: save masks as PNG."
            )
        return mapped[inverse].reshape(codes.shape).astype(np.uint8)

    def detect(self, masks: Sequence[Path]) -> None:
        """Decide 0/1 or 0/255 for binary masks: the first of ``masks`` that tells them apart."""
        if self.decided:
            return
        for path in masks:
            values, indexed = read_mask_values(path, colours=False)
            kind = binary_kind(single_channel(values, path), indexed, path)
            if kind is not None:
                self.encoding = (kind, path)
                break
        else:
            self.encoding = ("0/1", masks[0])  # every mask all 0 or all 255: read alike
        log.info("Masks are binary %s, decided by '%s'.", *self.encoding)

    def describe(self) -> str:
        """How masks are read, in words (``make data DATASET=folder``)."""
        if self.palette is not None:
            return f"colour masks, {len(self.palette)} palette colours"
        if not self.binary:
            return f"index masks, values 0..{len(self.classes) - 1} (255 = ignore)"
        encoding, decided_by = self.encoding
        rule = {"0/255": "foreground = value >= 128", "0/1": "1 = foreground, 255 = ignore"}
        return f"binary {encoding} masks ({rule[encoding]}), decided by '{decided_by}'"


def colour(value, key: str) -> tuple[int, int, int]:
    values = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else []
    if len(values) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in values):
        raise LightsegError(f"{key}: {value!r} is not a colour; write [red, green, blue], 0..255.")
    return tuple(values)


def check_palette(palette, classes: tuple[str, ...]) -> tuple[tuple[int, int, int], ...]:
    colours = tuple(colour(c, "data.source.palette entry") for c in palette)
    if len(colours) != len(classes):
        raise LightsegError(
            f"data.source.palette has {len(colours)} colours for {len(classes)} classes "
            f"({', '.join(classes)}): give one [r, g, b] per class, in class order."
        )
    if len(set(colours)) != len(colours):
        raise LightsegError("data.source.palette lists a colour twice: each class needs its own.")
    return colours


def read_tiff(path: Path) -> np.ndarray:
    """A TIFF's first image as ``[H, W]`` or ``[H, W, bands]``, bands last or first on disk."""
    try:
        with tifffile.TiffFile(path) as tiff:
            series = tiff.series[0]
            pixels, axes = series.asarray(), series.axes
    except Exception as error:  # tifffile raises many types for damaged files
        raise LightsegError(
            f"Cannot read TIFF file '{path}' ({type(error).__name__}: {error}). Check that it is "
            "a complete TIFF, or remove the sample."
        ) from None
    if pixels.ndim == 3 and axes[1:] == "YX":
        pixels = np.moveaxis(pixels, 0, -1)  # planar: bands first on disk
    elif (pixels.ndim == 3 and axes[:2] != "YX") or pixels.ndim > 3:
        raise LightsegError(
            f"TIFF file '{path}' holds an array of shape {pixels.shape} (axes {axes}); expected "
            "one image: height x width, with bands first or last. Save one image per file."
        )
    return pixels


def pixel_type(pixels: np.ndarray, path: Path) -> np.ndarray:
    """uint8, uint16 or float32 pixels; other integer types if their values fit in uint16."""
    if pixels.dtype in (np.uint8, np.uint16, np.float32):
        return pixels
    if pixels.dtype == bool:
        return pixels.astype(np.uint8) * 255
    if pixels.dtype == np.float64:
        return pixels.astype(np.float32)
    if np.issubdtype(pixels.dtype, np.integer) and pixels.min() >= 0 and pixels.max() <= 65535:
        return pixels.astype(np.uint16)
    raise LightsegError(
        f"Image '{path}' has {pixels.dtype} pixels (values {pixels.min()}..{pixels.max()}); "
        "lightseg reads 8-bit, 16-bit and float images. Convert it to one of those."
    )


def read_mask_values(path: Path, colours: bool) -> tuple[np.ndarray, bool]:
    """A mask's stored values (``[H, W]`` or ``[H, W, 3]``) and whether they are a palette
    PNG's indices (``colours``: read palette PNGs as their colours)."""
    if path.suffix.lower() in TIFF_SUFFIXES:
        values = read_tiff(path)
        return (values[..., :3] if values.ndim == 3 else values), False
    image = open_image(path)
    if image.mode == "P":
        return (np.asarray(image.convert("RGB")), False) if colours else (np.asarray(image), True)
    if image.mode == "1":
        return np.asarray(image).astype(np.uint8), True
    if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        return np.asarray(image.convert("RGB")), False
    if image.mode == "LA":
        return np.asarray(image)[..., 0], False
    return np.asarray(image), False


def single_channel(values: np.ndarray, path: Path) -> np.ndarray:
    """A mask's values ``[H, W]``; an RGB mask whose channels are all equal counts as gray."""
    if values.ndim == 2:
        return values
    if not (values == values[..., :1]).all():
        codes = np.unique(colour_codes(values))[:5]
        examples = ", ".join(str(list(int(code).to_bytes(3, "big"))) for code in codes)
        raise LightsegError(
            f"Mask '{path}' is a colour image (colours {examples}, ...). Set "
            "data.source.palette to the colour of each class, in the order of "
            "data.source.classes (e.g. data.source.palette=[[0,0,0],[255,0,0]]), or save "
            "the masks as grayscale or palette PNGs of class indices."
        )
    return values[..., 0]


def binary_kind(values: np.ndarray, indexed: bool, path: Path) -> str | None:
    """``"0/1"``, ``"0/255"``, or None for a mask both read alike (all 0, or all 255); other
    values below 128 look like the indices of more classes and are an error."""
    present = set(np.unique(values).tolist())
    if indexed or (1 in present and present <= {0, 1, IGNORE_INDEX}):
        return "0/1"
    if present <= {0} or present <= {IGNORE_INDEX}:
        return None
    if max(present) < BINARY_THRESHOLD:
        raise LightsegError(
            f"Mask '{path}' holds the values {sorted(present)[:10]}: class indices of "
            f"{max(present) + 1} classes, but data.source.classes names two. Name every class in "
            "data.source.classes (index order), or save binary masks as 0/1 or 0/255."
        )
    return "0/255"


def colour_codes(rgb: np.ndarray) -> np.ndarray:
    """One int per ``[r, g, b]`` (its 3 bytes, big-endian)."""
    return rgb.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1])

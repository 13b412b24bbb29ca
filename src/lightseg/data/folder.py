"""Your own images and masks (``data=folder``), paired by name, every mask checked as it is read.

Layout under ``root`` (folder names and the mask name pattern are settings)::

    images/case_001.jpg      .jpg .jpeg .png .bmp .tif .tiff; subfolders are kept in the ids
    masks/case_001.png       the image's stem through mask_pattern ("{stem}", "{stem}_mask")
    splits/train.txt         optional split lists, one id per line (val.txt optional)
    splits/val.txt  splits/test.txt

or a CSV (``csv``) with columns ``image`` and ``mask`` (paths relative to ``root``) and
optionally ``split`` (train/val/test) and ``stratum`` (what the generated split balances).
Without split lists the split is the generic deterministic one (stratified by ``stratum``),
and k-fold cross-validation (``data.folds``) works as for PH2.

Masks are never guessed silently. With ``palette`` (one [r, g, b] per class, in class order)
masks are colour images and each colour is its class; ``ignore_color`` marks pixels to ignore.
Without it masks hold one value per pixel (a grayscale image, a palette PNG's indices, or an
RGB image whose three channels are equal):

* more than two classes: the values are class indices 0..len(classes)-1, 255 = ignore;
* two classes: either ``0/1`` masks (1 = foreground, 255 = ignore; 1-bit and palette PNGs are
  read this way) or ``0/255`` masks (foreground = value >= 128, so JPEG noise is harmless; a
  mask with more than 5% of its pixels in 33..222 is refused as not binary).
  The first mask (by id) that tells the two apart decides for the dataset, and is logged; a
  mask of the other kind later is an error ("mixed mask encodings").

Images have ``channels`` channels each: 1 (grayscale, 8 or 16 bit), 3 (RGB) or any number from
TIFF (read with tifffile, bands last or first). 8-bit, 16-bit and float pixels are scaled to
[0, 1] by their type's range before normalisation; with other than 3 channels set
``data.mean=auto data.std=auto`` (values of the training split, lightseg.data.statistics).
"""

from __future__ import annotations

import csv as csvlib
import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tifffile
from PIL import ImageOps

from lightseg.data.base import (
    BINARY_THRESHOLD,
    SPLITS,
    Sample,
    SegmentationSource,
    open_image,
    stratified_split,
    threshold_binary,
)
from lightseg.errors import LightsegError
from lightseg.task import IGNORE_INDEX

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
TIFF_SUFFIXES = (".tif", ".tiff")
SHOWN = 10  # files listed in an error before "... and N more"


class Folder(SegmentationSource):
    """Images and masks of your own, paired by file name; see the module docs for the rules."""

    how_to_get = (
        "Put your images in '<root>/images/' and their masks, with the same file names, in "
        "'<root>/masks/' (README: Train on your own data), and point data.source.root at <root>."
    )

    def __init__(
        self,
        root: str | Path,
        classes: Sequence[str] = ("background", "foreground"),
        images: str = "images",
        masks: str = "masks",
        mask_pattern: str = "{stem}",
        split_lists: str = "splits",
        csv: str | None = None,
        palette: Sequence[Sequence[int]] | None = None,
        ignore_color: Sequence[int] | None = None,
        channels: int = 3,
    ) -> None:
        super().__init__(root)
        self.classes = check_classes(classes)
        self.images, self.masks, self.split_lists, self.csv = images, masks, split_lists, csv
        self.mask_pattern = mask_pattern
        self.mask_stem = pattern_regex(mask_pattern)
        self.palette = None if palette is None else check_palette(palette, self.classes)
        self.ignore_color = None if ignore_color is None else colour(ignore_color, "ignore_color")
        if self.palette is not None and self.ignore_color in self.palette:
            raise LightsegError(
                f"data.source.ignore_color={list(self.ignore_color)} is also a class colour in "
                "data.source.palette: give the pixels to ignore a colour of their own."
            )
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise LightsegError(f"data.source.channels={channels!r} must be a whole number >= 1.")
        self.channels = channels
        self._encoding: tuple[str, Path] | None = None  # binary masks: ("0/1" | "0/255", by)

    @property
    def in_channels(self) -> int:
        return self.channels

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    # --- finding and pairing --------------------------------------------------------------

    def find(self) -> list[Sample]:
        if not self.root.is_dir():
            raise LightsegError(
                f"data.source.root='{self.root}' does not exist. Point it at the folder that "
                f"holds {self.images}/ and {self.masks}/ (or your CSV): data=folder "
                "data.source.root=/path/to/your/data (README: Train on your own data)."
            )
        samples = self.from_csv() if self.csv else self.pair()
        if self.split_lists and (self.root / self.split_lists).is_dir():
            if self.csv and any(s.subset for s in samples):
                raise LightsegError(
                    f"'{self.root / self.csv}' has a split column and "
                    f"'{self.root / self.split_lists}' holds split lists: keep one of the two (or "
                    "set data.source.split_lists=null)."
                )
            samples = self.listed(samples)
        self.check_image(samples[0].image)
        self.detect_encoding(samples)
        return samples

    def pair(self) -> list[Sample]:
        """Images and masks paired by (subfolder, stem); unpaired files are an error."""
        image_dir, mask_dir = self.root / self.images, self.root / self.masks
        for folder, key in ((image_dir, "images"), (mask_dir, "masks")):
            if not folder.is_dir():
                raise LightsegError(
                    f"'{folder}' does not exist. data=folder reads images from "
                    f"'<root>/{self.images}/' and masks from '<root>/{self.masks}/' (root "
                    f"'{self.root}'): create it, set data.source.{key}=<its folder name>, or "
                    "list the pairs in a CSV (data.source.csv=<file>)."
                )
        images = files_by_stem(image_dir, lambda stem: stem)
        if not images:
            raise LightsegError(
                f"No images in '{image_dir}': found no file ending in {', '.join(IMAGE_SUFFIXES)} "
                "(subfolders included). Put your images there, or point data.source.root at "
                "the folder that holds images/ and masks/."
            )
        unmatched: list[Path] = []
        masks = files_by_stem(mask_dir, self.image_stem_of, unmatched)
        for found, what in ((images, "images"), (masks, "masks")):
            clashes = {key: paths for key, paths in found.items() if len(paths) > 1}
            if clashes:
                listed = "; ".join(" and ".join(map(str, p)) for p in list(clashes.values())[:3])
                raise LightsegError(
                    f"Several {what} share a name and cannot be paired: {listed}"
                    f"{more(len(clashes), 3)}. Keep one file per name (remove or rename the "
                    "others)."
                )
        lone_images = sorted(images.keys() - masks.keys())
        lone_masks = sorted(masks.keys() - images.keys())
        if lone_images or lone_masks or unmatched:
            parts = []
            if lone_images:
                shown = [images[k][0].relative_to(self.root) for k in lone_images]
                parts.append(f"{len(lone_images)} image(s) without a mask: {listing(shown)}")
            lone = [masks[k][0].relative_to(self.root) for k in lone_masks]
            lone += [p.relative_to(self.root) for p in unmatched]
            if lone:
                parts.append(f"{len(lone)} mask(s) without an image: {listing(sorted(lone))}")
            raise LightsegError(
                f"Unpaired files under '{self.root}': {'; '.join(parts)}. The mask of "
                f"'{self.images}/<name>.<ext>' must be '{self.masks}/"
                f"{self.mask_pattern.replace('{stem}', '<name>')}.<ext>' (data.source.mask_pattern="
                f"'{self.mask_pattern}'; any of {' '.join(IMAGE_SUFFIXES)}). Add the missing "
                "files, move the unpaired ones out of the folder, or fix data.source.mask_pattern."
            )
        return [Sample(key, images[key][0], masks[key][0]) for key in sorted(images, key=str)]

    def image_stem_of(self, mask_stem: str) -> str | None:
        match = self.mask_stem.fullmatch(mask_stem)
        return match.group("stem") if match else None

    def from_csv(self) -> list[Sample]:
        """Pairs (and optional split and stratum) from the CSV, every file checked to exist."""
        table = self.root / self.csv
        if not table.is_file():
            raise LightsegError(f"data.source.csv='{self.csv}': '{table}' does not exist.")
        with open(table, newline="", encoding="utf-8-sig") as stream:
            reader = csvlib.DictReader(stream)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{k.strip(): (v or "").strip() for k, v in row.items() if k} for row in reader]
        if not {"image", "mask"} <= set(columns):
            raise LightsegError(
                f"'{table}' has the columns {columns}, but needs 'image' and 'mask' (paths "
                "relative to data.source.root), and may have 'split' (train/val/test) and "
                "'stratum'."
            )
        if not rows:
            raise LightsegError(f"'{table}' lists no images: add one row per (image, mask) pair.")
        samples, seen = [], {}
        for line, row in enumerate(rows, start=2):  # line 1 is the header
            paths = {}
            for column in ("image", "mask"):
                path = self.root / row[column]
                if not row[column] or not path.is_file():
                    raise LightsegError(
                        f"'{table}' line {line}: the {column} '{row[column]}' does not exist "
                        f"(looked for '{path}'). Paths are relative to data.source.root; fix the "
                        "row or remove it."
                    )
                paths[column] = path
            sample_id = Path(row["image"]).with_suffix("").as_posix()
            if sample_id in seen:
                raise LightsegError(
                    f"'{table}' lines {seen[sample_id]} and {line} both list the image "
                    f"'{sample_id}': list each image once."
                )
            seen[sample_id] = line
            split = row.get("split", "").lower() or None
            if "split" in columns and split not in SPLITS:
                raise LightsegError(
                    f"'{table}' line {line}: split '{row.get('split', '')}' must be one of "
                    f"{', '.join(SPLITS)} (or drop the split column for a generated split)."
                )
            samples.append(
                Sample(sample_id, paths["image"], paths["mask"], row.get("stratum") or None, split)
            )
        return sorted(samples, key=lambda s: s.id)

    def listed(self, samples: list[Sample]) -> list[Sample]:
        """``samples`` with ``subset`` set from the split lists (splits/train.txt ...)."""
        folder = self.root / self.split_lists
        by_id = {s.id: s for s in samples}
        subsets: dict[str, str] = {}
        for name in SPLITS:
            path = folder / f"{name}.txt"
            if not path.is_file():
                continue
            unknown = []
            for line, text in enumerate(path.read_text().splitlines(), start=1):
                entry = list_entry(text, self.images)
                if entry is None:
                    continue
                if entry not in by_id:
                    unknown.append(f"line {line}: '{text.strip()}'")
                elif subsets.setdefault(entry, name) != name:
                    raise LightsegError(
                        f"'{entry}' is listed in both {subsets[entry]}.txt and {name}.txt under "
                        f"'{folder}': a sample belongs to one split."
                    )
            if unknown:
                raise LightsegError(
                    f"'{path}' names samples that were not found: {listing(unknown)}. Entries are "
                    f"ids (the image's path under '{self.images}/' without extension, e.g. "
                    f"'{samples[0].id}'); fix or remove those lines."
                )
        missing = [name for name in ("train", "test") if name not in subsets.values()]
        if missing:
            raise LightsegError(
                f"'{folder}' needs {' and '.join(f'{m}.txt' for m in missing)} (val.txt is "
                "optional: without it validation is taken from train.txt). Add the list(s), "
                "or set data.source.split_lists=null for a generated split."
            )
        unlisted = len(samples) - len(subsets)
        if unlisted:
            log.warning("%d sample(s) are in none of the lists in %s: not used.", unlisted, folder)
        return [Sample(s.id, s.image, s.mask, s.stratum, subsets.get(s.id)) for s in samples]

    def split(self, samples, fractions, seed) -> dict[str, list[Sample]]:
        """The split lists (or CSV split column) where given, else the generated split.

        Without a val list, ``data.split.val`` of the train list becomes validation.
        """
        if not any(s.subset for s in samples):
            return stratified_split(samples, fractions, seed)
        groups = {name: [s for s in samples if s.subset == name] for name in SPLITS}
        if not groups["val"]:
            inner = stratified_split(groups["train"], {"val": fractions.get("val", 0.0)}, seed)
            groups["train"], groups["val"] = inner["train"], inner["val"]
        return groups

    # --- reading --------------------------------------------------------------------------

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        image = self.read_image(sample.image)
        mask = self.read_mask(sample.mask)
        if image.shape[:2] != mask.shape:
            raise LightsegError(
                f"The mask '{sample.mask}' is {mask.shape[1]}x{mask.shape[0]} pixels but its image "
                f"'{sample.image}' is {image.shape[1]}x{image.shape[0]}: a mask must match its "
                "image pixel for pixel. Export the mask again at the image's size."
            )
        return image, mask

    def read_image(self, path: Path) -> np.ndarray:
        """Pixels ``[H, W, channels]`` as uint8, uint16 or float32, checked for ``channels``."""
        if path.suffix.lower() in TIFF_SUFFIXES:
            pixels = read_tiff(path)
        else:
            image = ImageOps.exif_transpose(open_image(path))  # as predict reads photos
            if image.mode in ("P", "CMYK", "YCbCr"):
                image = image.convert("RGB")
            pixels = np.asarray(image)
        if pixels.ndim == 2:
            pixels = pixels[..., None]
        self.check_channels(pixels, path)
        return pixel_type(pixels, path)

    def check_image(self, path: Path) -> None:
        """Read one image: a wrong channel count stops before anything slow happens."""
        self.read_image(path)

    def check_channels(self, pixels: np.ndarray, path: Path) -> None:
        found = pixels.shape[-1]
        if found != self.channels:
            kind = {1: " (grayscale)", 3: " (RGB)", 4: " (RGBA or 4 bands)"}.get(found, "")
            raise LightsegError(
                f"Image '{path}' has {found} channel(s){kind}, but data.source.channels="
                f"{self.channels}: every image must have the same number of channels. Convert "
                f"the images that differ, or set data.source.channels={found} if all of them "
                f"have {found} (the network follows it; set data.mean=auto data.std=auto unless "
                "you give one value per channel)."
            )

    def read_mask(self, path: Path) -> np.ndarray:
        """Class indices ``[H, W]`` uint8 (255 = ignore), following the module docs' rules."""
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
        encoding, decided_by = self.encoding
        kind = binary_kind(values, indexed, path)
        if kind not in (None, encoding):
            raise LightsegError(
                f"Mixed mask encodings: '{path}' is a {kind} mask (values "
                f"{shown_values(values)}), but '{decided_by}' made this dataset's masks "
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
        bad = np.unique(values[(values >= len(self.classes)) & (values != IGNORE_INDEX)])
        if bad.size:
            raise LightsegError(
                f"Mask '{path}' holds the value(s) {bad.tolist()[:10]}, but data.source.classes "
                f"names {len(self.classes)} classes, so values must be 0..{len(self.classes) - 1} "
                f"(or {IGNORE_INDEX} = ignore). Name every class in data.source.classes, in index "
                "order; if the masks are colour images, set data.source.palette instead."
            )
        return values.astype(np.uint8)

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
            counts = np.bincount(inverse.ravel(), minlength=unique.size)[mapped < 0]
            order = np.argsort(-counts)[:5]
            shown = ", ".join(
                f"{list(decode_colour(unmapped[i]))} ({counts[i] / codes.size:.1%} of pixels)"
                for i in order
            )
            raise LightsegError(
                f"Mask '{path}' has {unmapped.size} colour(s) that are not in data.source.palette: "
                f"{shown}. Add each class colour to data.source.palette (in the order of "
                "data.source.classes), or set data.source.ignore_color for pixels to ignore. "
                "Masks saved as JPEG get new colours at edges: save masks as PNG."
            )
        return mapped[inverse].reshape(codes.shape).astype(np.uint8)

    # --- the binary encoding --------------------------------------------------------------

    @property
    def encoding(self) -> tuple[str, Path]:
        """("0/1" or "0/255", the mask that decided it) for binary masks without a palette."""
        if self._encoding is None:
            self.find()  # detects it
        return self._encoding

    def detect_encoding(self, samples: Sequence[Sample]) -> None:
        if self.palette is not None or not self.binary or self._encoding is not None:
            return
        for sample in sorted(samples, key=lambda s: s.id):
            values, indexed = read_mask_values(sample.mask, colours=False)
            kind = binary_kind(single_channel(values, sample.mask), indexed, sample.mask)
            if kind is not None:
                self._encoding = (kind, sample.mask)
                break
        else:
            self._encoding = ("0/1", samples[0].mask)  # every mask all 0 or all 255
        log.info("Masks are binary %s, decided by '%s'.", *self._encoding)

    def describe_masks(self) -> str:
        """How masks are read, in words (``make data DATASET=folder``)."""
        if self.palette is not None:
            return f"colour masks, {len(self.palette)} palette colours"
        if not self.binary:
            return f"index masks, values 0..{len(self.classes) - 1} (255 = ignore)"
        encoding, decided_by = self.encoding
        rule = (
            "foreground = value >= 128" if encoding == "0/255" else "1 = foreground, 255 = ignore"
        )
        return f"binary {encoding} masks ({rule}), decided by '{decided_by}'"


# --- helpers --------------------------------------------------------------------------------


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    names = tuple(str(c) for c in classes)
    if len(names) < 2 or len(set(names)) != len(names) or any(not n or "/" in n for n in names):
        raise LightsegError(
            f"data.source.classes={list(names)} must name at least two different classes, "
            "background first (metric names use them, so no '/' and no empty names)."
        )
    return names


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


def pattern_regex(pattern: str) -> re.Pattern:
    """``"{stem}_mask"`` -> a regex whose group ``stem`` is the image's stem."""
    if not isinstance(pattern, str) or pattern.count("{stem}") != 1 or "/" in pattern:
        raise LightsegError(
            f"data.source.mask_pattern={pattern!r} must contain {{stem}} once (the image's file "
            "name without extension), e.g. '{stem}' or '{stem}_mask', and no '/'."
        )
    before, after = pattern.split("{stem}")
    return re.compile(f"{re.escape(before)}(?P<stem>.+){re.escape(after)}")


def files_by_stem(folder: Path, stem_of, unmatched: list[Path] | None = None) -> dict:
    """``{id: [paths]}`` of the image files under ``folder``; id = subfolder/stem (POSIX).

    Hidden files and folders (names starting with '.') are skipped; ``stem_of`` maps a file's
    stem to the image stem it belongs to (None: it matches no image: added to ``unmatched``).
    """
    found = defaultdict(list)
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        stem = stem_of(path.stem)
        if stem is None:
            if unmatched is not None:
                unmatched.append(path)
            continue
        found[relative.with_name(stem).as_posix()].append(path)
    return dict(found)


def list_entry(text: str, images: str) -> str | None:
    """A split list's line as a sample id: extension and a leading images folder dropped."""
    entry = text.strip()
    if not entry or entry.startswith("#"):
        return None
    path = Path(entry)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        path = path.with_suffix("")
    if path.parts and path.parts[0] == images and len(path.parts) > 1:
        path = Path(*path.parts[1:])
    return path.as_posix()


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
    """A mask file's stored values (``[H, W]``, or ``[H, W, 3]`` for colours), and whether they
    are a palette PNG's indices. ``colours``: read palette PNGs as their colours."""
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
        examples = ", ".join(map(str, distinct_colours(values)[:5]))
        raise LightsegError(
            f"Mask '{path}' is a colour image (colours {examples}, ...). Set "
            "data.source.palette to the colour of each class, in the order of "
            "data.source.classes (e.g. data.source.palette=[[0,0,0],[255,0,0]]), or save "
            "the masks as grayscale or palette PNGs of class indices."
        )
    return values[..., 0]


def binary_kind(values: np.ndarray, indexed: bool, path: Path) -> str | None:
    """``"0/1"``, ``"0/255"``, or None for a mask both read alike (all 0, or all 255).

    Values 0..127 other than 0/1 in a two-class mask are an error: they look like the indices
    of more classes than ``classes`` names.
    """
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
    rgb = rgb.astype(np.int64)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def decode_colour(code: int) -> tuple[int, int, int]:
    return int(code) >> 16 & 255, int(code) >> 8 & 255, int(code) & 255


def distinct_colours(rgb: np.ndarray) -> list[list[int]]:
    return [list(decode_colour(c)) for c in np.unique(colour_codes(rgb))]


def shown_values(values: np.ndarray) -> str:
    present = np.unique(values).tolist()
    return str(present) if len(present) <= 8 else f"{present[:8]}..."


def listing(items: Sequence) -> str:
    return ", ".join(str(i) for i in items[:SHOWN]) + more(len(items), SHOWN)


def more(count: int, shown: int) -> str:
    return f" ... and {count - shown} more" if count > shown else ""

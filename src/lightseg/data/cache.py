"""A dataset decoded once into a memory-mapped file that every loader worker shares.

Decoding BMPs, JPEGs or PNGs and shrinking large images cost more than the augmentations that
follow, and they give the same result every epoch. With ``data.cache=true`` each sample is read
once through its source, optionally shrunk to a working size (``data.cache_scale`` times the
training size, so that augmentations still start from more pixels than the network sees), and
appended to one flat file: the image's pixels as read (``[H, W, C]``, 8-bit, 16-bit or float),
then its uint8 mask ``[H, W]``; the index keeps each sample's offset, pixel type and shape.
Loader workers map that file (the operating system keeps one copy in its page cache for all
of them) and read a sample as a slice, without decoding anything.

The cache lives in a folder named after the source and a key over everything that decides its
contents: the format version, the source's class and settings, the working size, and each
sample's id, file paths, sizes and modification times. Editing, adding or removing a file, or
asking for another size, gives another key and a fresh cache; the same data and size reuse the
existing one. A cache is written to a temporary folder and renamed into place when complete,
so an interrupted build leaves nothing half-written; a file lock beside it lets one process (of
all nodes sharing the folder) build while the others wait and then read the same cache.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from lightseg.data.fingerprint import fingerprint
from lightseg.errors import LightsegError
from lightseg.utils.locks import file_lock

if TYPE_CHECKING:
    from lightseg.data.base import Sample, SegmentationSource

log = logging.getLogger(__name__)

#: Bump when the layout or the resizing changes, so that old caches are not read.
FORMAT_VERSION = 2
INDEX, PIXELS = "index.json", "pixels.u8"

Reader = Callable[["Sample"], tuple[np.ndarray, np.ndarray]]


def working_size(height: int, width: int, minimum_hw: Sequence[int] | None) -> tuple[int, int]:
    """The size an image is stored at: shrunk, keeping its aspect ratio, until one side
    reaches its minimum (both stay at least that large); never enlarged. None: as read."""
    if minimum_hw is None:
        return height, width
    scale = min(1.0, max(minimum_hw[0] / height, minimum_hw[1] / width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def shrink(image: np.ndarray, mask: np.ndarray, size_hw: tuple[int, int]):
    """Image (area-averaged) and mask (nearest: class indices stay indices) at ``size_hw``."""
    if image.shape[:2] == size_hw:
        return image, mask
    dsize = (size_hw[1], size_hw[0])
    shrunk = cv2.resize(image, dsize, interpolation=cv2.INTER_AREA)
    # OpenCV drops a single channel's axis; the pipelines expect [H, W, C] as the source gave
    return (
        shrunk.reshape(*size_hw, *image.shape[2:]),
        cv2.resize(mask, dsize, interpolation=cv2.INTER_NEAREST),
    )


def cache_key(
    source: SegmentationSource, samples: Sequence[Sample], minimum_hw: Sequence[int] | None
) -> str:
    """A short hash of everything that decides the cache's contents (see the module doc)."""
    minimum = list(minimum_hw) if minimum_hw else None
    return fingerprint(source, samples, version=FORMAT_VERSION, minimum_hw=minimum)[:16]


class SampleCache:
    """Read access to a built cache: ``read(sample_id) -> (image, mask)`` as the source read
    them (the image in its own pixel type, the mask uint8).

    The file is mapped read-only on first use in each process (a pickled cache, as sent to
    spawned workers, maps it anew). Each read returns fresh arrays (a copy costs far less
    than decoding), so transforms may change them in place without changing the next epoch.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        index = json.loads((self.folder / INDEX).read_text())
        self.entries: dict[str, list[int]] = index["samples"]
        self._pixels: np.memmap | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}

    def read(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / PIXELS, dtype=np.uint8, mode="r")
        offset, dtype, *shape = self.entries[sample_id]
        image_bytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        end = offset + image_bytes
        image = np.array(self._pixels[offset:end]).view(dtype).reshape(shape)
        mask = np.array(self._pixels[end : end + shape[0] * shape[1]]).reshape(shape[:2])
        return image, mask


def open_cache(
    source: SegmentationSource,
    samples: Sequence[Sample],
    read: Reader,
    folder: Path,
    minimum_hw: Sequence[int] | None = None,
) -> SampleCache:
    """The cache of ``samples`` under ``folder``, built first if there is none for this key."""
    target = Path(folder) / f"{type(source).__name__}-{cache_key(source, samples, minimum_hw)}"
    if not (target / INDEX).is_file():
        # one builder across processes and nodes on shared storage; the others wait, then read
        try:
            with file_lock(target.with_name(f".{target.name}.lock"), "building the data cache"):
                if not (target / INDEX).is_file():
                    _build(samples, read, target, minimum_hw)
        except OSError as error:
            raise LightsegError(
                f"Cannot write the data cache in '{target.parent}' ({error}). Point "
                "data.cache_dir at a writable folder with room for the decoded images, or set "
                "data.cache=false."
            ) from None
    return SampleCache(target)


def _build(
    samples: Sequence[Sample], read: Reader, target: Path, minimum_hw: Sequence[int] | None
) -> None:
    size = f"shrunk to at least {minimum_hw[0]}x{minimum_hw[1]}" if minimum_hw else "full size"
    log.info("Building the data cache of %d samples (%s) in %s", len(samples), size, target)
    scratch = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        scratch.mkdir(parents=True)
        entries, offset = {}, 0
        with open(scratch / PIXELS, "wb") as pixels:
            for sample in samples:
                image, mask = read(sample)
                image, mask = shrink(image, mask, working_size(*image.shape[:2], minimum_hw))
                image, mask = np.ascontiguousarray(image), np.ascontiguousarray(mask)
                entries[sample.id] = [offset, image.dtype.str, *image.shape]
                pixels.write(image.tobytes())
                pixels.write(mask.astype(np.uint8, copy=False).tobytes())
                offset += image.nbytes + mask.size
        index = {"version": FORMAT_VERSION, "minimum_hw": minimum_hw, "samples": entries}
        (scratch / INDEX).write_text(json.dumps(index))
        try:
            scratch.rename(target)
        except OSError:  # another process finished the same cache first: use theirs
            if not (target / INDEX).is_file():
                raise
    finally:  # an OSError becomes open_cache's message
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("Data cache ready: %.0f MB", offset / 2**20)

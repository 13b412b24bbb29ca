"""A dataset decoded once (shrunk to ``data.cache.scale`` x the training size) into one
memory-mapped file that every loader worker shares: decoding and shrinking cost more than
augmenting and give the same result every epoch. The folder is keyed on the source's
fingerprint, built in a scratch folder under a file lock, and checked on opening (a damaged
cache is rebuilt).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from lightseg.data.source import Sample, SegmentationSource, fingerprint
from lightseg.errors import LightsegError, room_to_write
from lightseg.utils.locks import file_lock

log = logging.getLogger(__name__)

#: Bump when the layout or the resizing changes, so that old caches are not read.
FORMAT_VERSION = 3
INDEX, PIXELS, RECORD = "index.json", "pixels.u8", "complete.json"

Reader = Callable[[Sample], tuple[np.ndarray, np.ndarray]]


def working_size(height: int, width: int, minimum_hw: Sequence[int] | None) -> tuple[int, int]:
    """Shrunk, keeping the aspect ratio, until one side reaches its minimum; never enlarged."""
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
    mask = cv2.resize(mask, dsize, interpolation=cv2.INTER_NEAREST)
    return shrunk.reshape(*size_hw, *image.shape[2:]), mask  # OpenCV drops a lone channel axis


class Damaged(Exception):
    """A cache folder whose files do not match its record (the message says how)."""


def sample_bytes(entry: list) -> tuple[int, int]:
    """Bytes of one sample's image and of its uint8 mask in the pixel file."""
    _, dtype, *shape = entry
    return int(np.prod(shape)) * np.dtype(dtype).itemsize, shape[0] * shape[1]


def verified_entries(folder: Path, ids: Sequence[str]) -> dict[str, list]:
    """The index entries of a complete cache holding ``ids``; :class:`Damaged` otherwise."""
    try:
        record = json.loads((folder / RECORD).read_text())
        index_text = (folder / INDEX).read_bytes()
        size = (folder / PIXELS).stat().st_size
    except FileNotFoundError as error:
        raise Damaged(f"{Path(error.filename).name} is missing") from None
    except (OSError, ValueError) as error:
        raise Damaged(f"{RECORD} is unreadable: {error}") from None
    if not isinstance(record, dict) or hashlib.sha1(index_text).hexdigest() != record.get("index"):
        raise Damaged(f"{INDEX} does not match the checksum in {RECORD}")
    if size != record.get("bytes"):
        raise Damaged(f"{PIXELS} has {size} bytes, {record.get('bytes')} were written")
    try:
        entries = json.loads(index_text)["samples"]
        ends = [entry[0] + sum(sample_bytes(entry)) for entry in entries.values()]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise Damaged(f"{INDEX} is not a cache index ({type(error).__name__}: {error})") from None
    absent = [i for i in ids if i not in entries]
    if absent or max(ends, default=0) > size:
        raise Damaged(f"{INDEX} lacks samples {absent[:3]} or points past {PIXELS}")
    return entries


class SampleCache:
    """``read(sample_id) -> (image, mask)`` as the source read them, in fresh arrays that
    transforms may change in place; mapped on first use in each process."""

    def __init__(self, folder: Path, entries: dict[str, list]) -> None:
        self.folder, self.entries = Path(folder), entries
        self._pixels: np.memmap | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_pixels": None}

    def read(self, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / PIXELS, dtype=np.uint8, mode="r")
        entry = self.entries[sample_id]
        (offset, dtype, *shape), (image_bytes, mask_bytes) = entry, sample_bytes(entry)
        end = offset + image_bytes
        image = np.array(self._pixels[offset:end]).view(dtype).reshape(shape)
        mask = np.array(self._pixels[end : end + mask_bytes]).reshape(shape[:2])
        return image, mask


def open_cache(
    source: SegmentationSource,
    samples: Sequence[Sample],
    read: Reader,
    folder: Path,
    minimum_hw: Sequence[int] | None = None,
) -> SampleCache:
    """The cache of ``samples`` under ``folder``, built (or rebuilt, if damaged) first."""
    key = fingerprint(source, samples, version=FORMAT_VERSION, minimum_hw=minimum_hw)[:16]
    target = Path(folder) / f"{type(source).__name__}-{key}"
    ids = [s.id for s in samples]
    with contextlib.suppress(Damaged):
        return SampleCache(target, verified_entries(target, ids))
    try:  # one builder across processes and nodes on shared storage; the others wait, then read
        with file_lock(target.with_name(f".{target.name}.lock"), "building the data cache"):
            try:
                return SampleCache(target, verified_entries(target, ids))
            except Damaged as damage:
                if target.exists():
                    log.warning(f"The data cache '{target}' is damaged ({damage}): rebuilding it.")
            for stale in [target, *target.parent.glob(f".{target.name}.*.partial")]:
                shutil.rmtree(stale, ignore_errors=True)  # no one else builds: killed builds
            _build(samples, read, target, minimum_hw)
            return SampleCache(target, verified_entries(target, ids))
    except OSError as error:
        raise LightsegError(
            f"Cannot write the data cache in '{target.parent}' ({error}). Point "
            "data.cache.dir (or paths.cache_dir, LIGHTSEG_CACHE_DIR) at a writable folder with "
            "room for the decoded images, or set data.cache.enabled=false."
        ) from None


def _build(
    samples: Sequence[Sample], read: Reader, target: Path, minimum_hw: Sequence[int] | None
) -> None:
    size = f"shrunk to at least {minimum_hw[0]}x{minimum_hw[1]}" if minimum_hw else "full size"
    log.info("Building the data cache of %d samples (%s) in %s", len(samples), size, target)
    scratch = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.partial")
    entries, offset = {}, 0
    fix = (
        " or point data.cache.dir (or paths.cache_dir, LIGHTSEG_CACHE_DIR) at a disk with room, "
        "or set data.cache.enabled=false"
    )
    needed = lambda: offset * len(samples) // max(len(entries), 1)  # noqa: E731 -- read late
    with room_to_write(target.parent, "the data cache", needed, fix):
        try:
            scratch.mkdir(parents=True)
            with open(scratch / PIXELS, "wb") as pixels:
                for sample in samples:
                    image, mask = read(sample)
                    image, mask = shrink(image, mask, working_size(*image.shape[:2], minimum_hw))
                    pixels.write(image.tobytes())
                    pixels.write(mask.astype(np.uint8, copy=False).tobytes())
                    entries[sample.id] = [offset, image.dtype.str, *image.shape]
                    offset += image.nbytes + mask.size
            index = json.dumps({"version": FORMAT_VERSION, "samples": entries}).encode()
            (scratch / INDEX).write_bytes(index)
            record = {"bytes": offset, "index": hashlib.sha1(index).hexdigest()}
            (scratch / RECORD).write_text(json.dumps(record))  # last: the cache is complete
            scratch.rename(target)
        finally:  # another OSError becomes open_cache's message
            shutil.rmtree(scratch, ignore_errors=True)
    log.info("Data cache ready: %.0f MB", offset / 2**20)

"""Exact and near-duplicate images, and the groups that keep related samples in one split
(README: Leakage). Near-duplicates on both sides of a split (video frames, re-saved copies)
inflate test numbers silently: ``make data`` lists them (:func:`report`), ``data.split.group_by``
keeps groups in one split (:func:`with_groups`), and a run whose images were hashed warns once
when near-duplicates cross its split border (:func:`warn_crossing`), never hashing itself.
Hashes (SHA-1 of the file, ``imagehash.phash``) are cached per source and settings.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

import imagehash
import numpy as np
import scipy.sparse
from PIL import Image
from rich.progress import track
from rich.table import Table
from scipy.sparse.csgraph import connected_components

from lightseg.data.source import SPLITS, Sample, SegmentationSource, file_stamp, fingerprint
from lightseg.errors import LightsegError, written_whole
from lightseg.utils.console import console

log = logging.getLogger(__name__)

#: Bits two perceptual hashes may differ in for near-duplicates: re-saved, brightened or
#: slightly re-cropped copies differ by 0-4, distinct lesions of the demo data by 10 or more.
NEAR = 6
VERSION = 1  # of the hash files: bump when hashing changes
SHOWN = 30  # pairs printed by make data; all of them go to a CSV


def cache_file(source: SegmentationSource, cache_dir: str | Path) -> Path:
    key = fingerprint(source, [], hashes=VERSION)[:16]
    return Path(cache_dir).expanduser() / "duplicates" / f"{type(source).__name__}-{key}.json"


def image_hashes(source: SegmentationSource, sample: Sample) -> list[str]:
    """``[SHA-1 of the file, perceptual hash]``; files PIL cannot open are read by the source."""
    content = hashlib.sha1(Path(sample.image).read_bytes()).hexdigest()
    try:
        with Image.open(sample.image) as image:
            image.draft(image.mode, (64, 64))  # JPEG: decoded at 1/2 .. 1/8 of its size
            return [content, str(imagehash.phash(image.convert("L")))]
    except OSError:  # e.g. a multi-band TIFF
        pixels = source.read(sample)[0].astype(np.float32)
        gray = pixels.mean(axis=-1) if pixels.ndim == 3 else pixels
        gray = 255 * (gray - gray.min()) / max(float(np.ptp(gray)), 1e-12)
        return [content, str(imagehash.phash(Image.fromarray(gray.astype(np.uint8))))]


def hashes(
    source: SegmentationSource,
    samples: Sequence[Sample],
    cache_dir: str | Path,
    compute: bool = True,
) -> dict[str, list[str]] | None:
    """``{id: [SHA-1, phash]}`` of ``samples`` from the cache, the missing ones computed (and
    stored), or None if ``compute`` is false and some are not cached."""
    path = cache_file(source, cache_dir)
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        stored = {}
    fresh = {s.id: stored[s.id] for s in samples if stored.get(s.id, [0])[0] == file_stamp(s.image)}
    todo = list({s.id: s for s in samples if s.id not in fresh}.values())
    if todo and not compute:
        return None
    for sample in track(todo, description="Hashing images", console=console, disable=not todo):
        fresh[sample.id] = [file_stamp(sample.image), *image_hashes(source, sample)]
    try:
        if todo:
            path.parent.mkdir(parents=True, exist_ok=True)
            with written_whole(path) as temp:
                temp.write_text(json.dumps({**stored, **fresh}))
    except OSError as error:  # the hashes still serve this process
        log.warning("Cannot store the image hashes in %s (%s).", path.parent, error)
    return {i: entry[1:] for i, entry in fresh.items()}


def pairs(found: Mapping[str, Sequence[str]], near: int = NEAR) -> list[tuple[str, str, int]]:
    """``(id, id, bits apart)`` of every near-duplicate pair (ids sorted), -1 bits: exact."""
    ids = sorted(found)
    bits = np.array([int(found[i][1], 16) for i in ids], dtype=np.uint64)
    rows = max(1, 2**22 // max(len(ids), 1))  # a block of the distance matrix at a time
    result = []
    for start in range(0, len(ids), rows):
        apart = np.bitwise_count(bits[start : start + rows, None] ^ bits[None, start:])
        for row, col in zip(*np.nonzero(apart <= near), strict=True):
            a, b = start + int(row), start + int(col)
            if b > a:
                exact = found[ids[a]][0] == found[ids[b]][0]
                result.append((ids[a], ids[b], -1 if exact else int(apart[row, col])))
    return result


def clusters(ids: Sequence[str], found_pairs: Sequence[tuple[str, str, int]]) -> dict[str, str]:
    """Each id's cluster of near-duplicates (linked through pairs), named by its first id."""
    index = {i: n for n, i in enumerate(sorted(ids))}
    edges = [(index[a], index[b]) for a, b, _ in found_pairs]
    rows, cols = zip(*edges, strict=True) if edges else ((), ())
    graph = scipy.sparse.coo_matrix((np.ones(len(edges)), (rows, cols)), (len(index),) * 2)
    labels = connected_components(graph, directed=False)[1]
    first: dict[int, str] = {}
    for i in sorted(ids):
        first.setdefault(labels[index[i]], i)
    return {i: first[labels[index[i]]] for i in ids}


def with_groups(
    source: SegmentationSource, samples: list[Sample], group_by: str | None, cache_dir
) -> list[Sample]:
    """``samples`` with ``Sample.group`` from ``data.split.group_by``: ``duplicates`` (clusters
    of near-duplicates), a column of the source's table (a folder CSV's), or a regex on the
    id whose first group (or whole match) is the key; unmatched samples stay alone."""
    if not group_by:
        return samples
    columns = source.columns()
    if group_by == "duplicates":
        ids = [s.id for s in samples]
        keys = clusters(ids, pairs(hashes(source, samples, cache_dir)))
    elif columns and group_by in next(iter(columns.values())):
        keys = {i: row.get(group_by) for i, row in columns.items()}
    else:
        try:
            pattern = re.compile(group_by)
        except re.error as error:
            why = f"it is no regular expression ({error})"
            raise group_error(group_by, columns, samples, why) from None
        matches = {s.id: pattern.search(s.id) for s in samples}
        keys = {i: m.group(1 if pattern.groups else 0) for i, m in matches.items() if m}
        if not keys:
            raise group_error(group_by, columns, samples, "as a regular expression it matches none")
    return [replace(s, group=keys.get(s.id) or None) for s in samples]


def group_error(group_by, columns, samples, why: str) -> LightsegError:
    named = f" nor one of the CSV columns {list(next(iter(columns.values())))}" if columns else ""
    return LightsegError(
        f"data.split.group_by={group_by!r} is not 'duplicates'{named}, and {why} of the sample "
        f"ids (e.g. '{samples[0].id}'). Give a regex whose first group is the group key, e.g. "
        "'^(.+)_\\d+$' for '<video>_<frame>' ids, a CSV column, or 'duplicates'."
    )


def where(splits: Mapping[str, Sequence[Sample]]) -> dict[str, str]:
    """Each id's split(s), e.g. ``val+test`` where two splits share a list (VOC)."""
    names = defaultdict(list)
    for name in SPLITS:
        for sample in splits.get(name, ()):
            names[sample.id].append(name)
    return {i: "+".join(n) for i, n in names.items()}


def crossing(found_pairs, split_of: Mapping[str, str]) -> list[tuple[str, str, int]]:
    """The pairs whose two images are in different splits (``split_of``: :func:`where`)."""
    return [p for p in found_pairs if split_of[p[0]] != split_of[p[1]]]


def used(splits: Mapping[str, Sequence[Sample]]) -> list[Sample]:
    """The samples of the splits, each once."""
    return list({s.id: s for group in splits.values() for s in group}.values())


def warn_crossing(source: SegmentationSource, splits, cache_dir) -> None:
    """One warning line when cached hashes show near-duplicates in two splits (no hashing)."""
    found = hashes(source, used(splits), cache_dir, compute=False)
    if found is None:
        return
    split_of = where(splits)
    across = crossing(pairs(found), split_of)
    if across:
        a, b, _ = across[0]
        log.warning(
            "%d near-duplicate image pair(s) cross the split border, e.g. '%s' (%s) and '%s' (%s): "
            "test numbers may be inflated; `make data` lists them, and data.split.group_by="
            "duplicates keeps them in one split.",
            len(across), a, split_of[a], b, split_of[b],
        )  # fmt: skip


def report(source: SegmentationSource, splits, cache_dir: str | Path) -> None:
    """Print the exact and near-duplicate pairs within and across splits (all in a CSV)."""
    samples = used(splits)
    found_pairs = pairs(hashes(source, samples, cache_dir))
    if not found_pairs:
        console.print(
            f"[green]No duplicate images[/]: no two of the {len(samples)} images are identical or "
            f"near-duplicates (perceptual hashes within {NEAR} bits)."
        )
        return
    split_of = where(splits)
    across = set(crossing(found_pairs, split_of))
    listed = sorted(found_pairs, key=lambda p: (p not in across, p))
    csv_path = cache_file(source, cache_dir).with_suffix(".pairs.csv")
    with open(csv_path, "w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["image", "split", "duplicate_of", "split", "bits_apart"])
        writer.writerows([a, split_of[a], b, split_of[b], bits] for a, b, bits in listed)
    exact = sum(bits < 0 for *_, bits in found_pairs)
    table = Table(
        "duplicate", "image", "split", "image", "split",
        title=f"{exact} exact and {len(found_pairs) - exact} near-duplicate pair(s), "
        f"{len(across)} across splits",
    )  # fmt: skip
    for a, b, bits in listed[:SHOWN]:
        kind = "exact" if bits < 0 else f"near ({bits} bits)"
        table.add_row(
            kind, a, split_of[a], b, split_of[b], style="red" if (a, b, bits) in across else None
        )
    console.print(table)
    more = f" ({len(listed) - SHOWN} more)" if len(listed) > SHOWN else ""
    console.print(
        f"Duplicate pairs{more}: all listed in {csv_path}. Near-duplicates across splits inflate "
        "test numbers: data.split.group_by=duplicates (or a regex / CSV column naming the "
        "video or patient) keeps each group in one split."
    )

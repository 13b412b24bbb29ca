"""One fingerprint of a source's data, for the caches derived from it (decoded samples,
training-split statistics): any change to a setting or to a file gives another key.

The source contributes its class, ``classes``, ``in_channels`` and declared settings
(:meth:`SegmentationSource.settings`); each sample its id and its files' paths, sizes and
modification times.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightseg.data.source import Sample, SegmentationSource


def file_stamp(path: Path | None) -> list | None:
    """``[absolute path, size, mtime_ns]``; a missing file is stamped too (its read errs)."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return [os.path.abspath(path), None]
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def fingerprint(source: SegmentationSource, samples: Sequence[Sample], **extra: Any) -> str:
    """SHA-1 (hex) of the source and its sample files, plus ``extra`` (what the cache itself
    adds: its format version, a working size)."""
    described = {
        "source": f"{type(source).__module__}.{type(source).__qualname__}",
        "classes": list(source.classes),
        "in_channels": source.in_channels,
        "settings": source.settings(),
        "samples": [
            [s.id, file_stamp(s.image), file_stamp(s.mask)]
            for s in sorted(samples, key=lambda s: s.id)
        ],
        **extra,
    }
    text = json.dumps(described, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()

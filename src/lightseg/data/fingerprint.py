"""One fingerprint of a source's data, for the caches derived from it (decoded samples,
training-split statistics): any change to a setting or to a file gives another key.

A source's settings are its constructor's arguments (root, classes, thresholds, palettes);
each sample contributes its id and its files' paths, sizes and modification times.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from inspect import Parameter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightseg.data.base import Sample, SegmentationSource

VARIADIC = (Parameter.VAR_POSITIONAL, Parameter.VAR_KEYWORD)


def file_stamp(path: Path | None) -> list | None:
    """``[absolute path, size, mtime_ns]``; a missing file is stamped too (its read errs)."""
    if path is None:
        return None
    try:
        stat = os.stat(path)
    except OSError:
        return [os.path.abspath(path), None]
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


def source_settings(source: SegmentationSource) -> dict[str, str]:
    """The source's settings: its constructor's arguments, read back as the attributes of the
    same names (what a config sets, not state a source keeps while it reads)."""
    arguments = inspect.signature(type(source).__init__).parameters.values()
    named = [a.name for a in arguments if a.name != "self" and a.kind not in VARIADIC]
    return {name: str(getattr(source, name, None)) for name in named}


def fingerprint(source: SegmentationSource, samples: Sequence[Sample], **extra: Any) -> str:
    """SHA-1 (hex) of the source's class, settings and sample files, plus ``extra`` (what the
    cache itself adds: its format version, a working size)."""
    described = {
        "source": f"{type(source).__module__}.{type(source).__qualname__}",
        "settings": source_settings(source),
        "samples": [
            [s.id, file_stamp(s.image), file_stamp(s.mask)]
            for s in sorted(samples, key=lambda s: s.id)
        ],
        **extra,
    }
    return hashlib.sha1(json.dumps(described, default=str).encode()).hexdigest()

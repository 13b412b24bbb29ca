"""What a run folder keeps so the run can be rebuilt: ``git_diff.patch`` (uncommitted changes),
``untracked.tar.gz`` (files a fork added and git does not ignore) and ``packages.txt`` (every
installed distribution, in pip freeze's format).
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
import subprocess
import tarfile
from pathlib import Path
from typing import Any

from lightseg import CONFIG_DIR

log = logging.getLogger(__name__)

GIT_DIFF = "git_diff.patch"
UNTRACKED = "untracked.tar.gz"
PACKAGES = "packages.txt"
#: Untracked files larger than this are listed in run_info.json instead of archived.
MAX_UNTRACKED_BYTES = 5 * 2**20
REPOSITORY = Path(CONFIG_DIR).parent


def git(*args: str, text: bool = True) -> str | bytes | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPOSITORY, capture_output=True, text=text, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def git_state() -> dict[str, Any]:
    """Commit, branch and whether the working tree differs from the commit (``None``: no git)."""
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "branch": None, "dirty": None, "changes": []}
    changes = (git("status", "--porcelain") or "").splitlines()
    return {
        "commit": commit.strip(),
        "branch": (git("rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None,
        "dirty": bool(changes),
        "changes": changes[:100],
    }


@functools.cache  # what is installed does not change while a process runs
def package_versions() -> dict[str, str]:
    """Every installed distribution and its version, like ``pip freeze``."""
    versions = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions[name] = dist.version
    return dict(sorted(versions.items(), key=lambda item: item[0].lower()))


def save_snapshot(folder: Path, git_info: dict[str, Any]) -> dict[str, Any]:
    """Write the rebuild files into ``folder``; returns what run_info.json should say of them."""
    record: dict[str, Any] = {"packages": PACKAGES}
    (folder / PACKAGES).write_text(
        "".join(f"{name}=={version}\n" for name, version in package_versions().items())
    )
    if not git_info.get("dirty"):
        return record
    diff = git("diff", "--binary", "HEAD", text=False) or b""
    (folder / GIT_DIFF).write_bytes(diff)
    archived, too_large = [], []
    with tarfile.open(folder / UNTRACKED, "w:gz") as archive:
        untracked = git("ls-files", "--others", "--exclude-standard", "-z") or ""
        for name in untracked.split("\0"):
            path = REPOSITORY / name
            if not name or not path.is_file():
                continue
            if path.stat().st_size > MAX_UNTRACKED_BYTES:
                too_large.append(name)
                continue
            archive.add(path, arcname=name, recursive=False)
            archived.append(name)
    record.update(git_diff=GIT_DIFF, untracked=UNTRACKED, untracked_files=archived)
    if too_large:
        record["untracked_not_archived"] = too_large
    log.warning(
        "The working tree has uncommitted changes: this run keeps them in %s (tracked files) "
        "and %s (%d untracked files) so it can be rebuilt; commit to make it reproducible from "
        "the commit alone.",
        folder / GIT_DIFF,
        folder / UNTRACKED,
        len(archived),
    )
    return record

"""What a run folder keeps so the run can be rebuilt: ``git_diff.patch`` (uncommitted changes to
tracked files, if any: ``git apply`` refuses an empty patch), ``untracked.tar.gz`` (files git
does not ignore nor track) and ``packages.txt`` (for ``pip install -r``)."""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import site
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
    """Every installed distribution and its version, like ``pip freeze``: from the site folders,
    not ``sys.path`` (where importing setuptools puts its vendored copies)."""
    folders = [*site.getsitepackages(), site.getusersitepackages()]
    dists = importlib.metadata.distributions(path=folders)
    named = (dist for dist in dists if dist.metadata["Name"])
    versions = {dist.metadata["Name"]: dist.version for dist in named}
    return dict(sorted(versions.items(), key=lambda item: item[0].lower()))


def installed_from_folder(name: str) -> str | None:
    """The local folder ``name`` was installed from (``pip install [-e] <folder>``), else None;
    from every record of it (a checkout's ``src/<name>.egg-info`` may come first)."""
    for dist in importlib.metadata.distributions(name=name):
        try:
            url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
        except (ValueError, AttributeError):
            continue
        if url.startswith("file://"):
            return url.removeprefix("file://")
    return None


def requirements() -> str:
    """packages.txt: ``name==version`` lines for ``pip install -r``; local installs as comments."""
    lines = []
    for name, version in package_versions().items():
        folder = installed_from_folder(name)  # no index has it (or a stranger's of that name)
        local = f"# {name} {version}: installed from {folder}, not from an index"
        lines.append(f"{name}=={version}" if folder is None else local)
    return "".join(f"{line}\n" for line in lines)


def save_snapshot(folder: Path, git_info: dict[str, Any]) -> dict[str, Any]:
    """Write the rebuild files into ``folder``; returns what run_info.json should say of them."""
    record: dict[str, Any] = {"packages": PACKAGES}
    (folder / PACKAGES).write_text(requirements())
    if not git_info.get("dirty"):
        return record
    diff = git("diff", "--binary", "HEAD", text=False) or b""
    if diff:
        (folder / GIT_DIFF).write_bytes(diff)
        record["git_diff"] = GIT_DIFF
    listed = (git("ls-files", "--others", "--exclude-standard", "-z") or "").split("\0")
    sizes = {n: (REPOSITORY / n).stat().st_size for n in listed if n and (REPOSITORY / n).is_file()}
    archived = [name for name, size in sizes.items() if size <= MAX_UNTRACKED_BYTES]
    too_large = [name for name, size in sizes.items() if size > MAX_UNTRACKED_BYTES]
    with tarfile.open(folder / UNTRACKED, "w:gz") as archive:
        for name in archived:
            archive.add(REPOSITORY / name, arcname=name, recursive=False)
    record.update(untracked=UNTRACKED, untracked_files=archived)
    if too_large:
        record["untracked_not_archived"] = too_large
    kept = [f"{folder / GIT_DIFF} (changed tracked files)"] if diff else []
    kept.append(f"{folder / UNTRACKED} ({len(archived)} untracked files)")
    log.warning(
        "The working tree has uncommitted changes: this run keeps them in %s so it can be "
        "rebuilt; commit to make it reproducible from the commit alone.",
        " and ".join(kept),
    )
    return record

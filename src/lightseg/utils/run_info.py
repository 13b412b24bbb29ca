"""``run_info.json``: what a run ran with (code version, packages, machine) and how it ended."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

import lightseg
from lightseg import CONFIG_DIR
from lightseg.errors import TrainingInterrupted

RUN_INFO = "run_info.json"
GIT_DIFF = "git_diff.patch"
#: How a run ended; ``running`` also marks a run that was killed without notice.
STATUSES = ("running", "finished", "interrupted", "failed")


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=Path(CONFIG_DIR).parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def git_state() -> dict[str, Any]:
    """Commit, branch and whether the working tree differs from the commit (``None``: no git)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "branch": None, "dirty": None, "changes": []}
    changes = (_git("status", "--porcelain") or "").splitlines()
    return {
        "commit": commit.strip(),
        "branch": (_git("rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None,
        "dirty": bool(changes),
        "changes": changes[:100],
    }


def package_versions() -> dict[str, str]:
    """Every installed distribution and its version, like ``pip freeze``."""
    versions = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            versions[name] = dist.version
    return dict(sorted(versions.items(), key=lambda item: item[0].lower()))


def machine() -> dict[str, Any]:
    info = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch_cuda": torch.version.cuda,
        "gpus": [],
    }
    if torch.cuda.is_available():
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def read_run_info(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / RUN_INFO
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_run_info(folder: Path, info: dict[str, Any]) -> None:
    path = Path(folder) / RUN_INFO
    temp = path.with_suffix(".json.partial")
    temp.write_text(json.dumps(info, indent=2))
    os.replace(temp, path)


def start_record(folder: Path, resumed_from: str | None = None) -> dict[str, Any]:
    """Write run_info.json for a starting run, or add a resume entry to an existing one."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    git = git_state()
    if git["dirty"]:
        (folder / GIT_DIFF).write_text(_git("diff", "HEAD") or "")
    info = read_run_info(folder) if resumed_from else None
    if info is None:
        info = {
            "started": now(),
            "command": sys.argv,
            "lightseg": lightseg.__version__,
            "git": git,
            "machine": machine(),
            "packages": package_versions(),
            "resumes": [],
        }
    else:
        resume = {"at": now(), "checkpoint": resumed_from, "command": sys.argv, "git": git}
        info.setdefault("resumes", []).append(resume)
    info.update(status="running", ended=None, message=None)
    write_run_info(folder, info)
    return info


def end_record(folder: Path, status: str, message: str | None = None) -> None:
    info = read_run_info(folder) or {}
    info.update(status=status, ended=now(), message=message)
    write_run_info(folder, info)


@contextlib.contextmanager
def recorded_run(folder: Path, resumed_from: str | None = None, enabled: bool = True) -> Iterator:
    """Keep ``run_info.json`` up to date around a run: running, then finished/interrupted/failed."""
    if not enabled:
        yield
        return
    start_record(folder, resumed_from)
    try:
        yield
    except (TrainingInterrupted, KeyboardInterrupt, SystemExit) as error:
        end_record(folder, "interrupted", str(error) or type(error).__name__)
        raise
    except BaseException as error:
        end_record(folder, "failed", f"{type(error).__name__}: {error}")
        raise
    end_record(folder, "finished")

"""``run_info.json``: what a run ran with, who runs it, and how it ended (``running``, also
what a run killed without notice keeps, ``finished``, ``interrupted``, ``pruned`` (an Optuna
trial stopped early, lightseg.tools.tune) or ``failed``)."""

from __future__ import annotations

import contextlib
import json
import platform
import shlex
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

import lightseg
from lightseg.errors import (
    TrainingInterrupted,
    TrialPruned,
    room_to_write,
    user_message,
    written_whole,
)
from lightseg.runs.folder import RunFolder
from lightseg.runs.snapshot import git_state, package_versions, save_snapshot
from lightseg.utils.locks import owner_record

#: Versions worth seeing at a glance (distribution names); packages.txt has all of them.
KEY_PACKAGES = (
    "torch",
    "torchvision",
    "lightning",
    "torchmetrics",
    "segmentation_models_pytorch",
    "albumentations",
    "hydra-core",
)


def now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def machine() -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch_cuda": torch.version.cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    if torch.cuda.is_available():
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def write_run_info(folder: str | Path, info: dict[str, Any]) -> None:
    path = RunFolder(folder).run_info
    with (
        room_to_write(path.parent, path.name, fix=" (the run's folder)"),
        written_whole(path) as temp,
    ):
        temp.write_text(json.dumps(info, indent=2))


def start_record(
    folder: str | Path, resumed_from: str | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Write run_info.json for a starting run, or add a resume entry to an existing one."""
    run = RunFolder(folder)
    run.path.mkdir(parents=True, exist_ok=True)
    at, git, info = now(), git_state(), run.info() if resumed_from else None
    entry = {
        "command": shlex.join(["python", "-m", "lightseg.train", *sys.argv[1:]]),  # as typed
        "overrides": list(overrides or []),
        "owner": owner_record(),
        "git": git,
        "files": save_snapshot(run.path, git),
    }
    if info is None:
        info = {"started": at, **entry, "lightseg": lightseg.__version__, "resumes": []}
        versions = {name: package_versions().get(name) for name in KEY_PACKAGES}
        info.update(machine=machine(), versions=versions)
    else:
        info.setdefault("resumes", []).append({"at": at, **entry, "checkpoint": resumed_from})
    info.update(status="running", owner=entry["owner"], ended=None, message=None)
    write_run_info(run.path, info)
    return info


def end_record(folder: str | Path, status: str, message: str | None = None) -> None:
    info = RunFolder(folder).info() or {}
    info.update(status=status, ended=now(), message=message)
    write_run_info(folder, info)


@contextlib.contextmanager
def recorded_run(
    folder: str | Path, resumed_from: str | None = None, overrides: list[str] | None = None
) -> Iterator[None]:
    """Keep ``run_info.json`` up to date around a run: running, then finished/interrupted/failed."""
    start_record(folder, resumed_from, overrides)
    try:
        yield
    except (TrainingInterrupted, KeyboardInterrupt) as error:
        end_record(folder, "interrupted", str(error) or type(error).__name__)
        raise
    except TrialPruned as error:
        end_record(folder, "pruned", str(error))
        raise
    except SystemExit as error:
        status = "interrupted" if error.code not in (0, None) else "finished"
        end_record(folder, status, f"exited with code {error.code}")
        raise
    except BaseException as error:
        end_record(folder, "failed", user_message(error) or f"{type(error).__name__}: {error}")
        raise
    end_record(folder, "finished")

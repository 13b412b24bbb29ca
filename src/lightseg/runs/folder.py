"""The run folder (layout: README, "Where runs go"): what a run writes where, and how a run is
found again. Code asks this module for these paths; the configs set theirs under
${paths.output_dir}."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from lightseg.utils.locks import RUN_LOCK as LOCK

CONFIG = "config.yaml"
HYDRA = ".hydra"
RUN_INFO = "run_info.json"
CHECKPOINTS = "checkpoints"
SPLITS = "splits"
PER_IMAGE = "per_image.csv"
WANDB_RUN_ID = "wandb_run_id.txt"
#: What a folder holds before training records anything: Hydra's record and log, the lock.
STARTUP_FILES = {HYDRA, "train.log", LOCK}


def _inside(*parts: str | Path) -> property:
    return property(lambda run: run.path.joinpath(*parts))


@dataclass(frozen=True)
class RunFolder:
    """One run's folder (it need not exist yet)."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    def __str__(self) -> str:
        return str(self.path)

    config = _inside(CONFIG)
    hydra = _inside(HYDRA)
    #: Hydra's composition of the run, interpolations intact (what a resume restores).
    hydra_config = _inside(HYDRA, "config.yaml")
    run_info = _inside(RUN_INFO)
    last = _inside(CHECKPOINTS, "last.ckpt")
    best = _inside(CHECKPOINTS, "best.ckpt")
    metrics = _inside("metrics.json")
    csv_log = _inside("csv", "metrics.csv")
    per_image = _inside(PER_IMAGE)
    wandb_run_id = _inside(WANDB_RUN_ID)
    evaluations = _inside("eval")

    def info(self) -> dict[str, Any] | None:
        return read_json(self.run_info)

    @property
    def status(self) -> str | None:
        """``running``, ``finished``, ``interrupted``, ``failed``, or None (never recorded)."""
        return (self.info() or {}).get("status")

    def overrides(self) -> list[str]:
        """The command-line overrides the run was started with (Hydra's record)."""
        return list(read_yaml(self.hydra / "overrides.yaml") or [])

    def group_choices(self) -> dict[str, str]:
        """The config group options the run was composed from (``model: smp``)."""
        hydra = (read_yaml(self.hydra / "hydra.yaml") or {}).get("hydra") or {}
        return dict((hydra.get("runtime") or {}).get("choices") or {})

    def read_metrics(self) -> dict[str, float | None] | None:
        return read_json(self.metrics)

    @property
    def is_run(self) -> bool:
        """Whether a run was recorded here (training writes config.yaml and run_info.json)."""
        return self.config.is_file() or self.run_info.is_file()

    @property
    def resumable(self) -> bool:
        """Training can continue here: a last.ckpt, no final metrics, and it did not fail."""
        return self.last.is_file() and not self.metrics.is_file() and self.status != "failed"

    def discard_if_unused(self) -> None:
        """Remove the folder if it holds only what Hydra and the lock wrote at the start (a run
        stopped by a mistake before it began leaves nothing behind)."""
        if self.path.is_dir() and {p.name for p in self.path.iterdir()} <= STARTUP_FILES:
            shutil.rmtree(self.path, ignore_errors=True)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> RunFolder | None:
        """The run a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), if it is in one."""
        path = Path(checkpoint).resolve()
        if path.parent.name != CHECKPOINTS:
            return None
        run = cls(path.parent.parent)
        return run if run.is_run or run.hydra.is_dir() else None


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None if there is none or it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def find_runs(root: str | Path) -> list[RunFolder]:
    """Every run folder under ``root`` (any depth), sorted, those Hydra started that training
    never recorded included (listed as missing runs)."""
    root = Path(root)
    found = {path.parent for pattern in (CONFIG, RUN_INFO) for path in root.rglob(pattern)}
    found |= {path.parent.parent for path in root.rglob(f"{HYDRA}/overrides.yaml")}
    return [
        RunFolder(folder)
        for folder in sorted(found)
        if not any(p.startswith(".") or p == "wandb" for p in folder.relative_to(root).parts)
    ]


def runs_of(log_dir: str | Path, name: str) -> Path:
    """Where the single runs of experiment ``name`` live (a sweep's: ``multiruns``)."""
    return Path(log_dir) / str(name) / "runs"


def newest_first(runs: Path) -> Iterator[RunFolder]:
    """The run folders directly under ``runs``, newest (by name: the start time) first."""
    if runs.is_dir():
        for path in sorted((p for p in runs.iterdir() if p.is_dir()), reverse=True):
            yield RunFolder(path)

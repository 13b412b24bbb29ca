"""Each test image's metric values in ``<run>/per_image.csv`` after the test stage, which
``make table`` pairs between runs; the failure shares are logged from these rows (they count
images)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lightseg.runs import RunFolder
from lightseg.runs.per_image import (
    failure_shares,
    failure_thresholds,
    with_failures,
    write_per_image,
)


def gathered(rows: list) -> list:
    """The rows of every process, rank by rank (the test split is sharded across them)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return rows
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, rows)
    return [row for part in parts for row in part]


class PerImageResults(Callback):
    """Writes the per-image values ``SegmentationModule.test_step`` returns (every process's, on
    rank 0), with the failure columns of ``failure`` ({metric: threshold}) and each image's
    stratum from the datamodule's test split (``make table ARGS="--by stratum"``)."""

    def __init__(self, folder: str | Path, failure: Mapping[str, float] | None = None) -> None:
        self.path = RunFolder(folder).per_image
        self.failure = failure_thresholds(failure)
        self.rows: list[tuple[str, dict[str, float]]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = []

    def on_test_batch_end(self, trainer, pl_module, outputs, *_) -> None:
        if isinstance(outputs, Mapping):
            self.rows.extend(outputs.get("per_image", ()))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = [(i, with_failures(values, self.failure)) for i, values in gathered(self.rows)]
        for name, share in failure_shares(values for _, values in rows).items():
            pl_module.log(f"test/{name}", share)  # the same on every rank: all rows gathered
        splits = getattr(getattr(trainer, "datamodule", None), "splits", None) or {}
        strata = {sample.id: sample.stratum for sample in splits.get("test", ())}
        if trainer.is_global_zero and rows:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_per_image(self.path, ({"id": i, "stratum": strata.get(i), **v} for i, v in rows))

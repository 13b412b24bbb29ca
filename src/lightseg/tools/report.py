"""What ``make eval`` and ``make score`` both produce from a split's predictions: each variant's
scores, the files (eval.json, per_class.csv, per_image.csv, confusion_matrix.png) written so that
a failure leaves earlier outputs whole, and the printed table."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
from rich.table import Column, Table
from torchmetrics import MetricCollection

from lightseg.data.source import Sample
from lightseg.errors import room_to_write
from lightseg.metrics import (
    PixelCalibration,
    class_key,
    confusion_matrix,
    finite_or_none,
    metric_values,
    update_per_image,
)
from lightseg.runs.per_image import (
    cell,
    failure_shares,
    failure_thresholds,
    with_failures,
    write_per_image,
)
from lightseg.task import Task
from lightseg.tools.uncertainty import mean_entropy
from lightseg.utils.console import console
from lightseg.visualize import confusion_figure


class Scores:
    """One inference variant's metrics, each image's values and the split's confusion matrix.

    ``failure`` (``{"iou": 0.65}``) adds a 1/0 column ``failure_rate/iou_below_0.65`` per image;
    ``calibration`` is off for hard masks (make score), whose "probabilities" are 0 or 1."""

    def __init__(
        self,
        metrics: MetricCollection,
        task: Task,
        failure: Mapping[str, float] | None = None,
        calibration: bool = True,
    ) -> None:
        self.task, self.metrics = task, metrics
        self.failure = failure_thresholds(failure)
        self.confusion = torch.zeros(task.num_classes, task.num_classes, dtype=torch.long)
        self.per_image: list[tuple[str, dict[str, float]]] = []
        self.calibration = PixelCalibration(task.num_classes) if calibration else None

    def update(self, probabilities: torch.Tensor, target: torch.Tensor, sample_id: str) -> None:
        """Score the argmax of probabilities [C, H, W] against ``target`` [1, H, W] int64."""
        if self.calibration is not None:
            self.calibration.update(probabilities[None], target)
        self.update_mask(probabilities.argmax(0).cpu().numpy(), target, sample_id)
        self.per_image[-1][1]["uncertainty"] = mean_entropy(probabilities)

    def update_mask(self, prediction: np.ndarray, target: torch.Tensor, sample_id: str) -> None:
        """Score a predicted mask [H, W] of class indices (``make score``: no probabilities)."""
        preds = torch.from_numpy(prediction.astype(np.int64))[None]
        (values,) = update_per_image(self.metrics, preds, target, self.task)
        self.per_image.append((sample_id, with_failures(values, self.failure)))
        self.confusion += confusion_matrix(preds, target, self.task.num_classes)

    def summary(self) -> dict[str, float | None]:
        """The split's metrics and failure shares, NaN as null so that eval.json stays JSON."""
        values = metric_values(self.metrics, self.task)
        if self.calibration is not None:
            values.update({k: float(v) for k, v in self.calibration.compute().items()})
        values.update(failure_shares(image for _, image in self.per_image))
        return {key: finite_or_none(value) for key, value in values.items()}


@contextlib.contextmanager
def staged(folder: Path, what: str, fix: str) -> Iterator[Path]:
    """A scratch folder inside ``folder`` whose files replace ``folder``'s once all are written,
    so that a failed write (a full disk: one paragraph) leaves the earlier outputs whole."""
    staging = folder / f".partial-{os.getpid()}"
    with room_to_write(folder, what, fix=fix):
        try:
            staging.mkdir(parents=True)
            yield staging
            for file in staging.iterdir():
                os.replace(file, folder / file.name)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def write_scores(
    folder: Path, report: dict, scores: Mapping[str, Scores], samples: list[Sample]
) -> None:
    """eval.json, per_class.csv, per_image.csv (with strata: make table --by) and the final
    variant's confusion_matrix.png: what make eval and make score both write."""
    (folder / "eval.json").write_text(json.dumps(report, indent=2))
    variants, classes = list(report["metrics"]), report["classes"]
    values = report["metrics"][variants[0]]
    names = [m for m in values if all(f"{m}_{class_key(c)}" in values for c in classes)]
    with (folder / "per_class.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["class", *(f"{m}_{v}" for v in variants for m in names)])
        for name in classes:
            row = [report["metrics"][v][f"{m}_{class_key(name)}"] for v in variants for m in names]
            writer.writerow([name, *(cell(value) for value in row)])
    strata = {sample.id: sample.stratum for sample in samples}
    write_per_image(
        folder / "per_image.csv",
        (
            {"id": i, "variant": v, "stratum": strata[i], **r}
            for v, s in scores.items()
            for i, r in s.per_image
        ),
    )
    final = report["examples_from"]
    figure = confusion_figure(
        scores[final].confusion.numpy(), classes, f"{report['split']}: {final}"
    )
    figure.savefig(folder / "confusion_matrix.png", dpi=120)


def print_report(report: dict) -> None:
    metrics = report["metrics"]
    variants = list(metrics)
    kind = "foreground" if len(report["classes"]) == 2 else "mean over classes present"
    table = Table(
        "metric",
        *(Column(variant, justify="right") for variant in variants),
        title=f"{report['split']} split: {report['images']} images",
        caption=f"iou, dice: {kind}; distances in pixels at each image's own resolution; "
        "empty: no value (e.g. a class in neither truth nor prediction)",
    )
    for name in metrics[variants[0]]:
        table.add_row(name, *(cell(metrics[v].get(name), 4) for v in variants))
    console.print(table)
    for variant, entry in report.get("coverage", {}).items():  # make score has none
        console.print(
            f"Coverage ({variant}: mean {entry['metric']} of the images kept, most certain "
            f"first): area {entry['area']:.4f}, oracle {entry['oracle_area']:.4f}, all images "
            f"{entry['full']:.4f}",
            soft_wrap=True,
        )
    members = report.get("members", [])  # scored baselines (make score) have no network
    if len(members) > 1:
        console.print(f"Ensemble of {len(members)}: {', '.join(members)}")
    if cost := report.get("cost"):
        console.print(
            f"Cost ({cost['variant']}): {cost['passes_per_image']:g} network passes, "
            f"{cost['seconds_per_image']:.3f} s per image",
            soft_wrap=True,
        )

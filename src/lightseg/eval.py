"""Evaluate a checkpoint on a split at each image's own resolution.

    python -m lightseg.eval ckpt_path=logs/demo/runs/<time>/checkpoints/best.ckpt
    make eval CKPT=... ARGS="split=val inference.flip=true inference.scales=[0.75,1,1.25]"
    make eval CKPT=... ARGS="postprocess=crf"                    (needs the .[crf] extra)

Prints IoU and Dice per class and mean, and pixel accuracy, for plain inference and, side by
side, with test-time augmentation and dense-CRF post-processing when those are configured.
Writes ``eval.json``, ``per_class.csv``, ``confusion_matrix.png`` (row-normalised) and
``examples.png`` (the worst and best predictions as overlays) to the output folder.
"""

from __future__ import annotations

import csv
import heapq
import json
import logging
import math
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from rich.progress import track
from rich.table import Table
from torch.utils.data import DataLoader, Dataset
from torchmetrics.classification import MulticlassConfusionMatrix

from lightseg import CONFIG_DIR
from lightseg.data.base import Sample, SegmentationSource
from lightseg.errors import LightsegError, user_errors
from lightseg.inference import Segmenter, build_segmenter, load_module
from lightseg.metrics import SegmentationMetrics
from lightseg.task import IGNORE_INDEX, Task
from lightseg.utils.config import plain
from lightseg.utils.console import console
from lightseg.utils.devices import inference_device
from lightseg.visualize import confusion_figure, letterbox, overlay_grid

log = logging.getLogger(__name__)

SPLIT_ALIASES = {f"data.split={name}" for name in ("train", "val", "test")}
THUMBNAIL = 256  # side of each panel in examples.png


class NativeImages(Dataset):
    """(image, mask, id) of each sample as the source reads it: no resizing, no normalising."""

    def __init__(self, source: SegmentationSource, samples: list[Sample]) -> None:
        self.source, self.samples = source, samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        image, mask = self.source.read(self.samples[index])
        return image, mask, self.samples[index].id


def as_read(item):
    """Keep loader items as numpy arrays (the default would make tensors of them)."""
    return item


class Scores:
    """Metrics of one inference variant: torchmetrics totals, the confusion matrix, and a
    per-image score (foreground Dice, or mean IoU over the classes present) for examples."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.metrics = SegmentationMetrics(task)
        self.confusion = MulticlassConfusionMatrix(task.num_classes, ignore_index=IGNORE_INDEX)
        self.per_image: list[tuple[float, str]] = []

    def update(self, prediction: np.ndarray, mask: np.ndarray, sample_id: str) -> None:
        preds = torch.from_numpy(prediction.astype(np.int64))[None]
        target = torch.from_numpy(mask.astype(np.int64))[None]
        self.metrics.update(preds, target)
        self.confusion.update(preds, target)
        self.per_image.append((image_score(prediction, mask, self.task), sample_id))

    def compute(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.metrics.compute().items()}


def image_score(prediction: np.ndarray, mask: np.ndarray, task: Task) -> float:
    """Foreground Dice (binary) or mean IoU over classes in truth or prediction (multiclass)."""
    valid = mask != IGNORE_INDEX
    pred, true = prediction[valid].astype(np.int64), mask[valid].astype(np.int64)
    n = task.num_classes
    confusion = np.bincount(true * n + pred, minlength=n * n).reshape(n, n)
    hits = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - hits
    if task.binary:
        denominator = confusion[1].sum() + confusion[:, 1].sum()
        return 1.0 if denominator == 0 else float(2 * hits[1] / denominator)
    present = union > 0
    return float((hits[present] / union[present]).mean()) if present.any() else 1.0


def run_folder(ckpt: Path) -> Path | None:
    """The training run folder of a checkpoint in ``<run>/checkpoints/``, if it is one."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None


def data_config(cfg: DictConfig, from_run: bool) -> DictConfig:
    """The ``data`` config: the run's own (same dataset, same split) or the composed one.

    Evaluation reads the split lists but writes none (``split_dir``: the training run's job).
    """
    return OmegaConf.merge(_data_config(cfg, from_run), {"split_dir": None})


def _data_config(cfg: DictConfig, from_run: bool) -> DictConfig:
    if not from_run:
        return cfg.data
    run = run_folder(Path(cfg.ckpt_path))
    saved = run / "config.yaml" if run else None
    if saved is None or not saved.is_file():
        raise LightsegError(
            f"No config.yaml next to checkpoint '{cfg.ckpt_path}' (expected <run>/config.yaml for "
            "<run>/checkpoints/*.ckpt), so the dataset is unknown. Name it: EXP=<experiment> "
            "(make) or experiment=... / data=... ."
        )
    return OmegaConf.load(saved).data


def output_folder(cfg: DictConfig) -> Path:
    if cfg.get("output_dir"):
        return Path(cfg.output_dir)
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    run = run_folder(Path(cfg.ckpt_path))
    base = run / "eval" if run else Path(cfg.paths.log_dir) / "eval"
    return base / f"{cfg.split}_{stamp}"


def evaluate(cfg: DictConfig, data_from_run: bool = False) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``cfg.split``; returns what ``eval.json`` holds."""
    device = inference_device(str(cfg.get("device", "auto")))
    module = load_module(cfg.ckpt_path, device)
    task = module.task
    datamodule = instantiate(data_config(cfg, data_from_run), _convert_="all")
    if tuple(datamodule.classes) != task.classes:
        raise LightsegError(
            f"The checkpoint predicts classes {list(task.classes)}, but the data config gives "
            f"{list(datamodule.classes)}. Evaluate on the dataset it was trained on (EXP=...)."
        )
    datamodule.prepare_data()
    datamodule.setup()
    if cfg.split not in datamodule.splits:
        raise LightsegError(f"split={cfg.split} is unknown: use test, val or train.")
    samples = datamodule.splits[cfg.split]

    segmenter = build_segmenter(module, plain(cfg.get("inference")))
    last = "tta" if segmenter.augmented else "plain"
    crf = instantiate(cfg.postprocess) if cfg.get("postprocess") else None
    names = ["plain", *(["tta"] if segmenter.augmented else []), *([f"{last}+crf"] if crf else [])]
    scores = {name: Scores(task) for name in names}

    loader = DataLoader(
        NativeImages(datamodule.source, samples),
        batch_size=None,
        collate_fn=as_read,
        num_workers=datamodule.num_workers,
    )
    for image, mask, sample_id in track(
        loader,
        total=len(samples),
        description=f"Evaluating {len(samples)} {cfg.split} images",
        console=console,
        transient=True,
    ):
        probabilities, augmented = segmenter.with_and_without_tta(image)
        scores["plain"].update(probabilities.argmax(0), mask, sample_id)
        if augmented is not None:
            probabilities = augmented
            scores["tta"].update(probabilities.argmax(0), mask, sample_id)
        if crf:
            refined = crf(image, probabilities)
            scores[f"{last}+crf"].update(refined.argmax(0), mask, sample_id)

    final = scores[names[-1]]
    report = {
        "checkpoint": str(cfg.ckpt_path),
        "split": str(cfg.split),
        "images": len(samples),
        "classes": list(task.classes),
        "inference": {
            "mode": segmenter.mode,
            "image_size": list(segmenter.image_size),
            "stride": list(segmenter.stride),
            "flip": segmenter.flip,
            "scales": list(segmenter.scales),
        },
        "postprocess": plain(cfg.get("postprocess")),
        "metrics": {name: scores[name].compute() for name in names},
        "examples_from": names[-1],
    }
    ranked = sorted(final.per_image)
    count = min(int(cfg.get("num_examples", 4)), math.ceil(len(ranked) / 2))
    report["worst"] = [{"id": i, "score": s} for s, i in ranked[:count]]
    best = heapq.nlargest(count, ranked[count:])  # never an image already among the worst
    report["best"] = [{"id": i, "score": s} for s, i in best]

    folder = output_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "eval.json").write_text(json.dumps(report, indent=2))
    write_per_class(folder / "per_class.csv", report)
    figure = confusion_figure(
        final.confusion.compute().numpy(), task.classes, f"{cfg.split}: {names[-1]}"
    )
    figure.savefig(folder / "confusion_matrix.png", dpi=120)
    save_examples(folder / "examples.png", report, datamodule.source, samples, segmenter, crf)
    print_report(report)
    console.print(f"Evaluation written to [bold]{folder}[/]")
    report["output_dir"] = str(folder)
    return report


def write_per_class(path: Path, report: dict) -> None:
    variants = list(report["metrics"])
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["class", *(f"{m}_{v}" for v in variants for m in ("iou", "dice"))])
        for name in report["classes"]:
            key = name.replace(" ", "_")
            row = [report["metrics"][v][f"{m}_{key}"] for v in variants for m in ("iou", "dice")]
            writer.writerow([name, *(f"{value:.6f}" for value in row)])


def save_examples(
    path: Path,
    report: dict,
    source: SegmentationSource,
    samples: list[Sample],
    segmenter: Segmenter,
    crf,
) -> None:
    """Worst predictions first, then the best: image | truth | prediction per row.

    The few shown images are read and predicted again rather than kept from the scoring pass,
    which would hold every image of the split in memory until the ranking is known.
    """
    by_id = {sample.id: sample for sample in samples}
    rows = [entry["id"] for entry in report["worst"] + report["best"]]
    if not rows:
        return
    images, truths, predictions = [], [], []
    for sample_id in rows:
        image, mask = source.read(by_id[sample_id])
        probabilities = segmenter(image)
        if crf:
            probabilities = crf(image, probabilities)
        images.append(letterbox(image, THUMBNAIL))
        truths.append(letterbox(mask.astype(np.uint8), THUMBNAIL))
        predictions.append(letterbox(probabilities.argmax(0).astype(np.uint8), THUMBNAIL))
    grid = overlay_grid(
        np.stack(images), np.stack(truths), np.stack(predictions), report["classes"]
    )
    Image.fromarray(grid).save(path)


def print_report(report: dict) -> None:
    metrics = report["metrics"]
    variants = list(metrics)
    first = metrics[variants[0]]
    summary = ["iou", "dice", "acc"] + (["dice_per_image"] if "dice_per_image" in first else [])
    order = summary + [f"iou_{c.replace(' ', '_')}" for c in report["classes"]]
    order += [f"dice_{c.replace(' ', '_')}" for c in report["classes"]]
    kind = "foreground" if len(report["classes"]) == 2 else "mean over classes"
    table = Table(
        title=f"{report['split']} split: {report['images']} images",
        caption=f"iou, dice: {kind}; acc: pixel accuracy",
    )
    table.add_column("metric")
    for variant in variants:
        table.add_column(variant, justify="right")
    for name in order:
        table.add_row(name, *(f"{metrics[v][name]:.4f}" for v in variants))
    console.print(table)


def data_chosen_on_command_line() -> bool:
    overrides = HydraConfig.get().overrides.task
    return any(o.lstrip("+~").split("=", 1)[0] in ("experiment", "data") for o in overrides)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    with user_errors():
        choice = cfg.get("data_from_run", "auto")
        from_run = not data_chosen_on_command_line() if choice == "auto" else bool(choice)
        evaluate(cfg, data_from_run=from_run)


def main() -> None:
    # `data.split` names the split fractions in training configs; here it means the split.
    sys.argv[1:] = [
        a.replace("data.split=", "split=", 1) if a in SPLIT_ALIASES else a for a in sys.argv[1:]
    ]
    hydra_main()


if __name__ == "__main__":
    main()

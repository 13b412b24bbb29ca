"""Score masks made outside lightseg (nnU-Net, a method's released masks) on a run's split.

    make score PRED=<folder of masks> NAME=nnunet RUN=logs/demo/runs/<time>

The masks (``<id>.<ext>``, read by ``data=folder``'s rules) are scored as ``make eval`` scores a
checkpoint and become a run of their own, ``<run>/baselines/<NAME>/``, so that ``make table
ARGS="eval=true"`` shows them as a row paired with the run's images.
"""

from __future__ import annotations

import shutil
from datetime import datetime
from pathlib import Path

import torch
import yaml
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.progress import track

from lightseg.config import app, plain
from lightseg.data.folder import files_by_stem, pattern_regex
from lightseg.data.module import SegmentationDataModule
from lightseg.data.pixels import MaskReader
from lightseg.data.source import Sample, listing, read_pair
from lightseg.errors import LightsegError
from lightseg.metrics import build_metrics, metrics_for
from lightseg.runs import RunFolder
from lightseg.runs.folder import HYDRA, SPLITS
from lightseg.runs.protocol import card
from lightseg.tools.report import Scores, print_report, staged, write_scores
from lightseg.utils.console import console

BASELINES = "baselines"  # <run>/baselines/<name>/: one run folder per scored set of masks


def run_samples(
    run: RunFolder, *splits: str
) -> tuple[DictConfig, SegmentationDataModule, dict[str, list[Sample]]]:
    """The run's config, its datamodule (built from the run's ``data`` node) and the samples of
    ``splits``, each checked against the run's ``splits/<split>.txt``: what was trained and
    tested on, found again (also by scripts/nnunet.py, which exports the same images)."""
    if not run.config.is_file():
        raise LightsegError(
            f"run='{run}' holds no config.yaml, so the images and metrics are unknown: point "
            "RUN= (--run) at a run folder that make train wrote (logs/<name>/runs/<time>)."
        )
    config = OmegaConf.load(run.config)
    datamodule = instantiate(OmegaConf.merge(config.data, {"split_dir": None}), _convert_="all")
    located = datamodule.locate()
    found = {}
    for split in splits:
        samples = located.get(split)
        if not samples:
            raise LightsegError(f"split={split} is unknown: use test, val or train.")
        listed = run.path / SPLITS / f"{split}.txt"
        if listed.is_file() and listed.read_text().splitlines() != [s.id for s in samples]:
            raise LightsegError(
                f"'{listed}' lists other images than the run's data config gives for "
                f"split={split} now: the dataset changed since the run. Restore the data the run "
                "was trained on."
            )
        found[split] = samples
    return config, datamodule, found


def score(cfg: DictConfig) -> dict:
    """Score the masks in ``cfg.pred`` on ``cfg.split`` of ``cfg.run``; returns the eval.json."""
    run, name, split = RunFolder(cfg.run), str(cfg.name), str(cfg.split)
    if not name or name != Path(name).name or name.startswith("."):
        raise LightsegError(f"name='{name}' must be a plain folder name (e.g. NAME=nnunet).")
    config, datamodule, splits = run_samples(run, split)
    samples = splits[split]
    task, pred = datamodule.task, Path(cfg.pred)
    if not pred.is_dir():
        raise LightsegError(f"pred='{pred}' is not a folder: PRED=<folder of predicted masks>.")
    found = files_by_stem(pred, pattern_regex(cfg.mask_pattern), "predicted masks", [])
    ids = [s.id for s in samples]
    missing = [i for i in ids if i not in found]
    extra = sorted(found.keys() - set(ids))
    paired = [s for s in samples if s.id in found]
    reader = MaskReader(task.classes, plain(cfg.palette))
    if paired:
        reader.detect([found[s.id] for s in paired])  # binary: 0/1 or 0/255
    metrics = plain(config.get("metrics")) or metrics_for(task)
    # hard masks: no probabilities, so no calibration or uncertainty to score
    scores = Scores(build_metrics(metrics, task), task, plain(cfg.failure), calibration=False)
    sizes = []  # "<id>: <mask size>, its image <size>"
    for sample in track(paired, description=f"Scoring {name}", console=console, transient=True):
        _, truth = read_pair(datamodule.source, sample)
        mask = reader.read(found[sample.id])
        if mask.shape != truth.shape:
            (height, width), (rows, columns) = mask.shape, truth.shape
            sizes.append(f"{sample.id}: {width}x{height}, its image {columns}x{rows}")
            continue
        scores.update_mask(mask, torch.from_numpy(truth.astype("int64"))[None], sample.id)
    problems = [
        f"{len(items)} {what}: {listing(items, 5)}"
        for items, what in (
            (missing, f"{split} image(s) without a mask"),
            (extra, f"mask(s) of no {split} image"),
            (sizes, "mask(s) of another size than their image"),
        )
        if items
    ]
    if problems:
        raise LightsegError(
            f"The masks in '{pred}' do not match the {len(ids)} {split} images of run '{run}': "
            f"{'; '.join(problems)}. Give each {split} image one mask at its own size, named after "
            f"its id ('{cfg.mask_pattern}' with {{stem}} = id, any image extension; "
            "mask_pattern=... changes it), and move the masks of other images out of the folder."
        )

    baseline = RunFolder(run.path / BASELINES / name)
    (baseline.path / HYDRA).mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.merge(config, {"name": name}), baseline.config)
    overrides = [o for o in run.overrides() if not o.startswith("name=")] + [f"name={name}"]
    (baseline.hydra / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if (run.hydra / "hydra.yaml").is_file():  # the group choices (debug=...) of the run
        shutil.copy(run.hydra / "hydra.yaml", baseline.hydra / "hydra.yaml")
    report = {
        "predictions": str(pred),
        "run": str(run),
        "split": split,
        "images": len(ids),
        "classes": list(task.classes),
        "metrics": {name: scores.summary()},
        "examples_from": name,
        # inference None: the masks are the other method's own, paired with any inference
        "protocol": card(datamodule, split, samples, "native", metrics, None, None, None),
    }
    folder = baseline.evaluations / f"{split}_{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"
    with staged(folder, "the scores", "") as staging:
        write_scores(staging, report, {name: scores}, samples)
    print_report(report)
    console.print(f"Scores written to {folder}", soft_wrap=True)
    return {**report, "output_dir": str(folder)}


@app("score")
def main(cfg: DictConfig) -> None:
    score(cfg)


if __name__ == "__main__":
    main()

"""Evaluate a checkpoint on a split at each image's own resolution.

    make eval CKPT=logs/demo/runs/<time>/checkpoints/best.ckpt
    make eval CKPT=... ARGS="split=val inference.flip=true inference.scales=[0.75,1,1.25]"
    make eval CKPT=... ARGS="postprocess=crf"                    (needs the .[crf] extra)
    make eval CKPT=a.ckpt,b.ckpt       (or a folder of runs) an ensemble: probabilities averaged

Scores plain inference and, side by side, the configured TTA and dense CRF: metrics, pixel
calibration, each image's uncertainty, the cost and the protocol card; the files it writes are
listed in README.md (After training). ``split=all`` scores every image (external validation).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from rich.progress import track
from torch.utils.data import DataLoader

from lightseg.config import app, plain
from lightseg.data.source import Sample, SegmentationSource, read_pair
from lightseg.errors import LightsegError
from lightseg.metrics import (
    build_metrics,
    metrics_for,
)
from lightseg.runs import RunFolder
from lightseg.runs.protocol import INFERENCE_KEYS, card, every_sample, inference_record
from lightseg.tools.inference import Segmenter, checkpoint_paths, load_segmenter
from lightseg.tools.report import Scores, print_report, staged, write_scores
from lightseg.tools.uncertainty import coverage_curve, coverage_figure
from lightseg.utils.console import console
from lightseg.utils.devices import inference_device
from lightseg.utils.loggers import add_to_wandb_run, numbers
from lightseg.visualize import letterbox, overlay_grid, reliability_figure

SPLIT_ALIASES = {f"data.split={name}" for name in ("train", "val", "test", "all")}
THUMBNAIL = 256  # side of each panel in examples.png


def data_config(cfg: DictConfig, from_run: bool, checkpoint: Path | None = None) -> DictConfig:
    """The run's own ``data`` config or the composed one, without ``split_dir`` (the run's job)."""
    data, checkpoint = cfg.data, checkpoint or cfg.ckpt_path
    if from_run:
        run = RunFolder.of_checkpoint(checkpoint)
        if run is None or not run.config.is_file():
            raise LightsegError(
                f"No config.yaml next to checkpoint '{checkpoint}' (expected <run>/config.yaml "
                "for <run>/checkpoints/*.ckpt), so the dataset is unknown. Name it: "
                "experiment=... or data=... ."
            )
        data = OmegaConf.load(run.config).data
    return OmegaConf.merge(data, {"split_dir": None})


def metrics_config(cfg: DictConfig, module, from_command_line: bool) -> dict:
    """The checkpoint's own metrics (the task's set if it stores none), the set the command line
    chose (``metrics=<set>``), or the checkpoint's with ``+metrics.<name>`` on top."""
    stored = dict(module.hparams.get("metrics") or metrics_for(module.task))
    if not from_command_line:
        return stored
    given = plain(cfg.get("metrics")) or {}
    chosen = HydraConfig.initialized() and HydraConfig.get().runtime.choices.get("metrics")
    return given if chosen else {**stored, **given}


def split_of(
    cfg: DictConfig, data_from_run: bool, checkpoint: Path, segmenter: Segmenter
) -> tuple[Any, list[Sample]]:
    """The datamodule and the samples of ``cfg.split``, checked against the model."""
    datamodule = instantiate(data_config(cfg, data_from_run, checkpoint), _convert_="all")
    classes, channels = segmenter.task.classes, segmenter.input.channels
    if tuple(datamodule.classes) != classes:
        raise LightsegError(
            f"The checkpoint predicts classes {list(classes)}, but the data config gives "
            f"{list(datamodule.classes)}. Evaluate on the dataset it was trained on "
            "(experiment=... or data=...)."
        )
    if datamodule.in_channels != channels:
        raise LightsegError(
            f"The checkpoint's model takes {channels}-channel images, but the data config reads "
            f"{datamodule.in_channels}-channel ones. Evaluate on the dataset it was trained on "
            "(experiment=... or data=...)."
        )
    splits = datamodule.locate()
    if cfg.split == "all":  # every image: external validation of a model trained elsewhere
        return datamodule, every_sample(splits)
    if cfg.split not in splits:
        raise LightsegError(f"split={cfg.split} is unknown: use test, val, train or all.")
    return datamodule, splits[cfg.split]


def read_split(datamodule, samples: list[Sample], description: str) -> Iterator[tuple]:
    """Each sample's full-size image and mask [1, H, W] int64, in order, read by loader workers."""
    read = partial(read_pair, datamodule.source)
    loader = DataLoader(
        samples, batch_size=None, collate_fn=read, num_workers=datamodule.num_workers
    )
    for image, mask in track(loader, description, len(samples), console=console, transient=True):
        yield image, torch.from_numpy(mask.astype(np.int64))[None]


def eval_card(cfg, data_from_run, checkpoints, datamodule, samples, segmenter, names, chosen):
    """The protocol card, with each variant's inference; ``external`` for another data.source."""
    settings = {k: getattr(segmenter, k) for k in INFERENCE_KEYS}
    untouched = {**settings, "flip": False, "scales": [1.0]}
    crf = (plain(cfg.get("postprocess")) or {}).get("_target_")
    variants = {
        name: inference_record(
            untouched if name == "plain" else settings,
            crf if name.endswith("+crf") else None,
            len(checkpoints),
        )
        for name in names
    }
    run = RunFolder.of_checkpoint(checkpoints[0])
    trained = ((run.read_metrics() if run else None) or {}).get("protocol") or {}
    external = not data_from_run and run is not None and run.config.is_file()
    external = external and plain(OmegaConf.load(run.config).data.source) != plain(cfg.data.source)
    record = card(
        datamodule,
        str(cfg.split),
        samples,
        "native",
        chosen,
        variants[names[-1]],
        segmenter.module.hparams.get("model"),
        trained.get("budget"),
        external,
    )
    return {**record, "variants": variants}


def evaluate(
    cfg: DictConfig, data_from_run: bool = False, metrics_from_command_line: bool = False
) -> dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` (a checkpoint or an ensemble) on ``cfg.split``: eval.json."""
    checkpoints = checkpoint_paths(plain(cfg.ckpt_path))
    device = inference_device(str(cfg.get("device", "auto")))
    segmenter = load_segmenter(checkpoints, device, plain(cfg.get("inference")))
    task = segmenter.task
    datamodule, samples = split_of(cfg, data_from_run, checkpoints[0], segmenter)

    crf = instantiate(cfg.postprocess) if cfg.get("postprocess") else None
    names = ["plain", "tta"] if segmenter.augmented else ["plain"]
    names += [f"{names[-1]}+crf"] if crf else []
    chosen = metrics_config(cfg, segmenter.module, metrics_from_command_line)
    failure = plain(cfg.get("failure"))
    scores = {name: Scores(build_metrics(chosen, task), task, failure) for name in names}

    seconds, passes = 0.0, segmenter.passes
    description = f"Evaluating {len(samples)} {cfg.split} images"
    for sample, (image, target) in zip(
        samples, read_split(datamodule, samples, description), strict=True
    ):
        start = time.perf_counter()
        plain_views, augmented = segmenter.views_with_and_without_tta(image)
        seconds += time.perf_counter() - start
        for name, views in (("plain", plain_views), ("tta", augmented)):
            if views is not None:
                scores[name].update(torch.from_numpy(views.probabilities), target, sample.id)
            if views is not None and views.count > 1:  # mutual information; >= 0 but rounding
                values = scores[name].per_image[-1][1]
                values["disagreement"] = max(0.0, values["uncertainty"] - views.entropy)
        if crf:
            start = time.perf_counter()
            refined = crf(image, (augmented or plain_views).probabilities)
            seconds += time.perf_counter() - start
            scores[names[-1]].update(torch.from_numpy(refined), target, sample.id)

    report = {
        "checkpoint": str(checkpoints[0]) if len(checkpoints) == 1 else "ensemble",
        "members": [str(path) for path in checkpoints],
        "split": str(cfg.split),
        "images": len(samples),
        "classes": list(task.classes),
        # an ensemble's temperature: one per member
        "inference": {key: getattr(segmenter, key) for key in INFERENCE_KEYS},
        "postprocess": plain(cfg.get("postprocess")),
        "protocol": eval_card(
            cfg, data_from_run, checkpoints, datamodule, samples, segmenter, names, chosen
        ),
        "metrics": {name: s.summary() for name, s in scores.items()},
        "coverage": {name: curve for name, s in scores.items() if (curve := coverage(s.per_image))},
        "examples_from": names[-1],
        "cost": {  # of the final variant; a pass covers the image (all its windows in slide mode)
            "variant": names[-1],
            "passes_per_image": (segmenter.passes - passes) / max(1, len(samples)),
            "seconds_per_image": seconds / max(1, len(samples)),
        },
    }
    computed = report["metrics"][names[-1]]
    monitor = str(cfg.get("monitor") or "").split("/", 1)[-1]  # ranks the examples if computed
    rank_by = report["examples_ranked_by"] = (
        monitor if monitor in computed else next(iter(computed))
    )
    lower = rank_by == monitor and cfg.monitor_mode == "min"
    scored = [(values.get(rank_by, math.nan), i) for i, values in scores[names[-1]].per_image]
    ranked = sorted(((v, i) for v, i in scored if not math.isnan(v)), reverse=lower)  # worst first
    count = min(int(cfg.get("num_examples", 4)), math.ceil(len(ranked) / 2))
    report["worst"] = [{"id": i, "score": s} for s, i in ranked[:count]]
    best = ranked[count:][::-1][:count]  # best first; never an image already among the worst
    report["best"] = [{"id": i, "score": s} for s, i in best]

    run = RunFolder.of_checkpoint(checkpoints[0]) if len(checkpoints) == 1 else None
    folder = Path(cfg.output_dir) if cfg.get("output_dir") else None
    if folder is None:  # in the checkpoint's run; an ensemble's in logs/eval
        base = run.evaluations if run else Path(cfg.paths.log_dir) / "eval"
        folder = base / f"{cfg.split}_{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"
    title = f"{cfg.split}: {report['images']} images"
    with staged(folder, "the evaluation", " or give another output_dir=...") as staging:
        write_scores(staging, report, scores, samples)
        if report["coverage"]:
            coverage_figure(report["coverage"], title).savefig(staging / "coverage.png", dpi=120)
        bins = {name: s.calibration.bins() for name, s in scores.items()}
        reliability_figure(bins, title).savefig(staging / "reliability.png", dpi=120)
        save_examples(staging / "examples.png", report, datamodule.source, samples, segmenter, crf)
    print_report(report)
    console.print(f"Evaluation written to {folder}", soft_wrap=True)
    if cfg.get("wandb", "auto"):
        to_wandb(run, report, folder)
    report["output_dir"] = str(folder)
    return report


def to_wandb(run: RunFolder | None, report: dict, folder: Path) -> None:
    """The report's numbers (``eval/<split>/<variant>/<metric>``, ...) into the summary of the
    W&B run that trained the checkpoint, if it logged to W&B."""
    if run is None or not run.wandb_run_id.is_file():
        return
    config = OmegaConf.load(run.config) if run.config.is_file() else None
    settings = plain(OmegaConf.select(config, "logger.wandb")) if config else None
    tree = {**report["metrics"], "cost": report["cost"], "coverage": report["coverage"]}
    values = numbers(tree, f"eval/{report['split']}")
    add_to_wandb_run(run.wandb_run_id, settings or {}, values, folder.glob("*.png"))
    console.print(
        f"Added to the W&B summary of run {run.wandb_run_id.read_text().strip()}", soft_wrap=True
    )


def coverage(per_image: list[tuple[str, dict[str, float]]]) -> dict | None:
    """:func:`coverage_curve` of each image's ``dice``, else its ``iou``, ranked by uncertainty;
    None without either."""
    metric = next((m for m in ("dice", "iou") if any(m in v for _, v in per_image)), None)
    if metric is None:
        return None
    curve = coverage_curve(
        [v["uncertainty"] for _, v in per_image], [v.get(metric, math.nan) for _, v in per_image]
    )
    return {"metric": metric, **curve} if curve else None


def save_examples(
    path: Path,
    report: dict,
    source: SegmentationSource,
    samples: list[Sample],
    segmenter: Segmenter,
    crf,
) -> None:
    """Worst predictions first, then the best: image | truth | prediction per row. The images are
    predicted again: keeping them from the scoring pass would hold the whole split in memory."""
    by_id = {sample.id: sample for sample in samples}
    panels = []  # image, truth, prediction
    for entry in report["worst"] + report["best"]:
        image, mask = source.read(by_id[entry["id"]])
        probabilities = segmenter(image)
        if crf:
            probabilities = crf(image, probabilities)
        pictures = (image, mask.astype(np.uint8), probabilities.argmax(0).astype(np.uint8))
        panels.append([letterbox(picture, THUMBNAIL) for picture in pictures])
    if panels:
        columns = (np.stack(column) for column in zip(*panels, strict=True))
        Image.fromarray(overlay_grid(*columns, report["classes"])).save(path)


def chosen_on_command_line(*groups: str) -> bool:
    """Whether an override of this invocation sets one of ``groups`` (or a key inside one)."""
    keys = [o.lstrip("+~").split("=", 1)[0] for o in HydraConfig.get().overrides.task]
    return any(k.split(".")[0].split("/")[0] in groups for k in keys)


def use_run_data(cfg: DictConfig) -> bool:
    """``data_from_run=auto``: the run's own data config unless experiment or data is given."""
    choice = cfg.get("data_from_run", "auto")
    return bool(not chosen_on_command_line("experiment", "data") if choice == "auto" else choice)


@app("eval")
def evaluate_command_line(cfg: DictConfig) -> None:
    evaluate(cfg, use_run_data(cfg), metrics_from_command_line=chosen_on_command_line("metrics"))


def main() -> None:
    # `data.split` names the split fractions in training configs; here it means the split.
    sys.argv[1:] = [
        a.replace("data.split=", "split=", 1) if a in SPLIT_ALIASES else a for a in sys.argv[1:]
    ]
    evaluate_command_line()


if __name__ == "__main__":
    main()

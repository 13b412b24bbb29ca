"""Benchmark: lightseg's Trainer path against a plain PyTorch loop (throughput, and time to a
target Dice), the data loaders, and inference with and without test-time augmentation.

    make bench                                   # small CPU defaults, several minutes
    make bench ARGS="--repeats 7 model.arch=FPN data.image_size=[256,256]"
    make bench ARGS="--parts loaders --workers 1,2,8,16 --gpu-rate 1500"

Throughput: both training paths use the same model, batches, optimizer and precision; runs
alternate in one process, each after its own warm-up steps, and the medians are compared.
Time to accuracy (benchmarks/time_to_accuracy.py) and the loader table (benchmarks/loaders.py)
say what they measure in their own files. Results go to the console and to ``bench.json`` /
``bench.md`` in ``--output``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import torch
from benchmarks.ddp import ddp_rows
from benchmarks.loaders import PH2_SIZED, loader_rows
from benchmarks.loops import Clock, compare, lightseg_run, plain_loop
from benchmarks.recipe import recipe_rows
from benchmarks.time_to_accuracy import time_to_accuracy
from omegaconf import DictConfig
from rich.table import Table

from lightseg.config import compose_config, image_size_hw
from lightseg.errors import user_errors
from lightseg.experiment import build
from lightseg.tools.inference import Segmenter
from lightseg.utils.console import console


def plain_run(cfg: DictConfig, warmup: int, steps: int) -> dict[str, float]:
    """Images/s of a hand-written loop: same network, loss, optimizer, loader and precision,
    and the same normalisation on the device (the module's own batch-transfer hook)."""
    experiment = build(cfg)
    experiment.datamodule.setup("fit")
    loader = experiment.datamodule.train_dataloader()
    return plain_loop(experiment.module, None, loader, cfg, warmup, steps)


def training_rows(cfg: DictConfig, args: argparse.Namespace) -> list[dict[str, Any]]:
    compared = compare(
        lambda: plain_run(cfg, args.warmup, args.steps),
        lambda: lightseg_run(cfg, args.warmup, args.steps),
        args.repeats,
    )
    if torch.cuda.is_available():
        compared["plain/lightseg CPU time"] = None
    row = {
        "model": f"{cfg.model.arch}/{cfg.model.get('encoder_name', '')}",
        "size": "x".join(map(str, image_size_hw(cfg.data.image_size))),
        "batch": cfg.data.batch_size,
        "precision": str(cfg.trainer.precision),
    }
    return [{**row, **compared}]


#: Test-time augmentation settings timed by ``inference_rows``.
TTA_VARIANTS = {
    "no TTA": {},
    "flip": {"flip": True},
    "flip x 3 scales": {"flip": True, "scales": (0.75, 1.0, 1.25)},
}


def inference_rows(cfg: DictConfig, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Images/s of ``Segmenter`` (whole-image inference, as eval and predict run it) on the
    validation images at their own size, without and with test-time augmentation."""
    experiment = build(cfg)
    dataset = experiment.datamodule.dataset("val")
    images = [dataset.read(i)[0] for i in range(min(len(dataset), args.inference_images))]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module = experiment.module.eval().to(device)
    rows = []
    for name, options in TTA_VARIANTS.items():
        segmenter = Segmenter(module, image_size=image_size_hw(cfg.data.image_size), **options)
        segmenter(images[0])  # warm-up
        rates, clock = [], Clock(device)
        for _ in range(args.repeats):
            clock.start()
            for image in images:
                segmenter(image)
            rates.append(clock.stop(len(images))["wall"])
        passes = len(segmenter.scales) * (2 if segmenter.flip else 1)
        rows.append(
            {
                "inference": name,
                "passes/image": passes,
                "image size": "x".join(map(str, images[0].shape[1::-1])),
                "images/s": statistics.median(rates),
            }
        )
    return rows


def machine() -> dict[str, Any]:
    info = {
        "cpu": platform.processor() or platform.machine(),
        "cores": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": L.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    with contextlib.suppress(OSError, StopIteration):
        info["cpu_model"] = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    return info


def cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def table(title: str, rows: list[dict[str, Any]]) -> Table:
    out = Table(title=title)
    keys = [k for k in rows[0] if k != "runs"]
    for key in keys:
        out.add_column(key, justify="right")
    for row in rows:
        out.add_row(*(cell(row[k]) for k in keys))
    return out


def markdown(title: str, rows: list[dict[str, Any]]) -> str:
    keys = [k for k in rows[0] if k != "runs"]
    lines = [f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def accuracy_row(result: dict[str, Any]) -> dict[str, Any]:
    """The time-to-accuracy result as one table row (epochs counted from 1, per seed)."""

    def epochs(name: str) -> str:
        return ",".join(
            "-" if r["epoch"] is None else str(r["epoch"] + 1) for r in result["runs"][name]
        )

    return {
        f"target {result['monitor']}": result["target"],
        "epoch budget": result["epoch_budget"],
        "plain s": result["plain_s"],
        "lightseg s": result["lightseg_s"],
        "plain/lightseg": result["ratio"],
        "plain epochs": epochs("plain"),
        "lightseg epochs": epochs("lightseg"),
    }


#: What ``make bench`` measures, in order; ``--parts`` picks some.
PARTS = ("training", "ddp", "time-to-accuracy", "loaders", "inference", "recipe")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(  # recipe (trains 2 recipes x experiments x seeds): asked for by name
        "--parts", default=",".join(PARTS[:-1]), help=f"some of {', '.join(PARTS)}"
    )
    parser.add_argument("--steps", type=int, default=16, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each run")
    parser.add_argument("--repeats", type=int, default=9, help="alternating runs of each path")
    parser.add_argument("--ddp-repeats", type=int, default=3, help="alternating DDP runs")
    parser.add_argument("--target", type=float, default=0.95, help="val Dice to reach (demo)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the time-to-accuracy runs")
    parser.add_argument(  # an experiment whose data is absent is skipped
        "--recipe-on", default="demo,demo_hard,ph2_unet", help="recipe part: experiments"
    )
    parser.add_argument("--datasets", default=f"demo,{PH2_SIZED},ph2,mads", help="loader table")
    parser.add_argument("--loader-size", type=int, default=256, help="loader table image size")
    parser.add_argument("--workers", default="1,2,max", help="loader workers; max = CPU count")
    parser.add_argument("--loader-samples", type=int, default=384, help="images per timing")
    parser.add_argument("--gpu-rate", type=float, default=1000, help="images/s a GPU trains at")
    parser.add_argument("--inference-images", type=int, default=16, help="images per repeat")
    parser.add_argument("--output", default=None, help="folder for bench.json and bench.md")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the throughput config")
    args = parser.parse_args(argv)
    args.parts = [p for p in args.parts.split(",") if p]
    unknown = sorted(set(args.parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown --parts {unknown}; choose from {', '.join(PARTS)}")
    cores = os.cpu_count() or 1
    args.workers = [cores if w == "max" else int(w) for w in args.workers.split(",")]
    args.seeds = [int(s) for s in args.seeds.split(",") if s]
    args.datasets = args.datasets.split(",")
    args.output = Path(args.output or f"logs/bench/{datetime.now():%Y-%m-%d_%H-%M-%S}")
    return args


def bench(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    gpu = torch.cuda.is_available()
    common = [
        "experiment=demo",
        "logger=csv",
        # checkpoint files, progress output and overlays are not part of training
        "~callbacks.model_checkpoint",
        "~callbacks.last_checkpoint",
        "~callbacks.progress_bar",
        "~callbacks.model_summary",
        "~callbacks.prediction_overlays",
        f"paths.output_dir={args.output}",
        f"trainer.accelerator={'gpu' if gpu else 'cpu'}",
    ]
    base = [*common, "scheduler=none", "data.cache.enabled=true", "data.num_workers=0"]
    variants = [[]] + (
        [["trainer.precision=bf16-mixed", "module.channels_last=true"]] if gpu else []
    )
    results: dict[str, Any] = {"machine": machine()}
    cfg = compose_config([*base, *args.overrides])
    if "training" in args.parts:
        results["training"] = []
        for variant in variants:
            variant_cfg = compose_config([*base, *variant, *args.overrides]) if variant else cfg
            console.print(f"Training throughput, {variant_cfg.trainer.precision}:")
            results["training"] += training_rows(variant_cfg, args)
    if "ddp" in args.parts:
        console.print("DDP training throughput, 2 CPU processes over gloo:")
        results["ddp"] = ddp_rows(cfg, args.warmup, args.steps, args.ddp_repeats)
    if "time-to-accuracy" in args.parts:
        console.print(f"Time to val/dice >= {args.target} on the demo, seeds {args.seeds}:")
        accuracy_cfg = compose_config([*common, *args.overrides])  # its own schedule: no base
        results["time_to_accuracy"] = time_to_accuracy(accuracy_cfg, args.target, args.seeds)
    if "loaders" in args.parts:
        console.print(f"Data-loader throughput at {args.loader_size} px:")
        results["loaders"] = loader_rows(args, str(cfg.paths.data_dir))
    if "inference" in args.parts:
        console.print("Inference throughput (eval / predict path):")
        results["inference"] = inference_rows(cfg, args)
    if "recipe" in args.parts:
        console.print(f"Auto plan against the hand recipe, same steps, seeds {args.seeds}:")
        experiments = args.recipe_on.split(",")
        results["recipe"] = recipe_rows(experiments, args.seeds, args.output, args.overrides)
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if gpu:
        results["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_results(results, args)
    return results


def write_results(results: dict[str, Any], args: argparse.Namespace) -> None:
    """bench.json (everything), bench.md and the console (the tables)."""
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bench.json").write_text(json.dumps(results, indent=2))
    info = ", ".join(f"{k}={v}" for k, v in results["machine"].items() if v)
    sections = []
    if results.get("training"):
        sections.append(("Training (images/s, median; goal: ratio <= 1.02)", results["training"]))
    if results.get("ddp"):
        title = "DDP training (images/s over all processes, median; goal: ratio <= 1.03)"
        sections.append((title, results["ddp"]))
    if results.get("time_to_accuracy"):
        title = "Time to accuracy on the demo (seconds, median; goal: ratio >= 1)"
        sections.append((title, [accuracy_row(results["time_to_accuracy"])]))
    if results.get("loaders"):
        title = f"Data loading (images/s, train pipeline, uint8; GPU rate {args.gpu_rate:g}/s)"
        sections.append((title, results["loaders"]))
    if results.get("inference"):
        sections.append(("Inference (images/s, median, batch 1)", results["inference"]))
    if results.get("recipe"):
        title = "Auto plan vs hand recipe (best checkpoint, mean ± sd over seeds, same steps)"
        sections.append((title, results["recipe"]))
    text = [f"Machine: {info}. Peak RSS {results['peak_rss_mb']:.0f} MB.", ""]
    text += [markdown(title, rows) for title, rows in sections]
    (args.output / "bench.md").write_text("\n".join(text))
    for title, rows in sections:
        console.print(table(title, rows))
    console.print(f"{info}\nWritten: {args.output / 'bench.md'}, {args.output / 'bench.json'}")


def main() -> None:
    warnings.filterwarnings("ignore", message=".*exists and is not empty.*")  # CSV dir reused
    with user_errors():
        bench()


if __name__ == "__main__":
    main()

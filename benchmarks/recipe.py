"""The auto plan (``recipe=auto``) against the hand recipe, at the same step budget.

For each experiment (the demo and ``demo_hard``) and seed, the hand recipe trains as
``make train EXP=<it>`` does; the plan then gets its optimizer steps as ``recipe.budget.steps``
(rounded up to whole epochs by the plan) and trains with everything else planned. Both report
the best checkpoint's val and test Dice (pooled and per image) and the steps they ran. A third
row is the plain reference loop of the time-to-accuracy part (no lightseg) trained for
``PLAIN_EPOCHS`` epochs at 128 px: ``demo_hard`` is calibrated to end it near per-image Dice
0.85-0.9, well below the demo's ceiling (final weights, val Dice of the last epoch).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from benchmarks.loaders import located
from benchmarks.time_to_accuracy import plain_time

from lightseg.config import compose_config
from lightseg.recipe import with_plan
from lightseg.train import train
from lightseg.utils.console import console

QUIET = ["logger=csv", "~callbacks.progress_bar", "~callbacks.model_summary", "print_config=false"]
KEYS = ("val/dice", "test/dice", "test/dice_per_image")
PLAIN_EPOCHS = 20


def plain_run(overrides: list[str], seed: int, folder: Path) -> dict[str, Any]:
    """The plain reference loop, ``PLAIN_EPOCHS`` epochs at 128 px, scored on val and test."""
    cfg = compose_config([*overrides, "data.image_size=128", f"paths.output_dir={folder}"])
    run = plain_time(cfg, float("inf"), seed, PLAIN_EPOCHS, test=True)
    return {
        "val/dice": run["val_dice"][-1],
        "test/dice": run["test_dice"],
        "test/dice_per_image": run["test_dice_per_image"],
        "steps": run["steps"],
    }


def present(overrides: list[str], folder: Path) -> bool:
    """Whether the experiment's data is on disk (PH2 is compared only where it is)."""
    cfg = compose_config([*overrides, f"paths.output_dir={folder}", "data.split_dir=null"])
    return located(cfg.data) is not None


def one_run(overrides: list[str], folder: Path) -> dict[str, Any]:
    given = [*overrides, f"paths.output_dir={folder}"]
    cfg = with_plan(compose_config(given), given, compose_config)
    metrics = train(cfg, given)
    return {**{k: metrics.get(k) for k in KEYS}, "steps": metrics["protocol"]["budget"]["steps"]}


def recipe_rows(
    experiments: list[str], seeds: list[int], output: Path, overrides: list[str]
) -> list[dict[str, Any]]:
    """One row per experiment and recipe: mean (and spread) over the seeds; an experiment
    whose data is absent is left out."""
    rows = []
    for experiment in experiments:
        if not present([f"experiment={experiment}", *overrides], output / "recipe"):
            console.print(f"  {experiment}: dataset not present, skipped")
            continue
        runs: dict[str, list[dict]] = {"hand": [], "auto": [], "plain": []}
        for seed in seeds:
            given = [f"experiment={experiment}", f"seed={seed}", *QUIET, *overrides]
            hand = one_run(given, output / "recipe" / f"{experiment}-hand-{seed}")
            auto = [*given, "recipe=auto", f"recipe.budget.steps={hand['steps']}"]
            runs["hand"].append(hand)
            runs["auto"].append(one_run(auto, output / "recipe" / f"{experiment}-auto-{seed}"))
            plain = output / "recipe" / f"{experiment}-plain-{seed}"
            runs["plain"].append(plain_run([f"experiment={experiment}", *overrides], seed, plain))
        for name, results in runs.items():
            row = {"experiment": experiment, "recipe": name, "seeds": len(results)}
            for key in (*KEYS, "steps"):
                values = [r[key] for r in results if r[key] is not None]
                spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
                digits = "g" if key == "steps" else ".4f"
                row[key] = f"{statistics.mean(values):{digits}}{spread}" if values else "n/a"
            rows.append(row)
    return rows

"""Learning-rate range test: the loss against the learning rate, and a suggested rate.

    make lr-find EXP=ph2_unet [ARGS="lr_find.num_training=200 data.batch_size=16"]

Lightning's ``Tuner.lr_find`` (Smith, 2017) trains ``lr_find.num_training`` steps while the
learning rate grows from ``min_lr`` to ``max_lr``, then restores the weights. The suggested
``optimizer.lr`` is where the smoothed loss falls fastest (:func:`steepest_fall`); batch size and
augmentations change it. Writes ``lr_find.png`` and ``lr_find.json`` to the run's output folder.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig

from lightseg.config import app, plain
from lightseg.experiment import build, group_choices, with_changes
from lightseg.utils.console import console, print_config


def steepest_fall(lrs: list[float], losses: list[float], mode: str) -> float | None:
    """The learning rate where the smoothed loss falls fastest (None with too few points), the
    slope taken along the sweep's even axis (log10(lr) when exponential), not against lr as
    Lightning's ``suggestion()``, which favours the smallest rates (Lightning #21141)."""
    points = [
        (lr, loss)
        for lr, loss in zip(lrs, losses, strict=True)
        if loss is not None and math.isfinite(loss)
    ][10 : len(lrs) - 1]  # the first 10 and the last point left out, as suggestion() does
    if len(points) < 2:
        return None
    rates = torch.tensor([lr for lr, _ in points], dtype=torch.float64)
    axis = rates.log10() if mode == "exponential" else rates
    slope = torch.gradient(torch.tensor([loss for _, loss in points]), spacing=[axis])[0]
    return float(rates[int(slope.argmin())])


def lr_find(cfg: DictConfig) -> dict[str, Any]:
    """Run the range test described by ``cfg.lr_find``; returns what ``lr_find.json`` holds."""
    output = Path(cfg.paths.output_dir)
    experiment = build(
        with_changes(cfg, scheduler=None),  # the range test sets each step's learning rate
        max_epochs=-1,  # as many epochs as num_training steps need
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(output),  # the tuner's temporary checkpoint
    )
    settings, datamodule = plain(cfg.lr_find), experiment.datamodule
    finder = Tuner(experiment.trainer).lr_find(
        experiment.module, datamodule=datamodule, update_attr=False, **settings
    )
    lrs = [float(v) for v in finder.results["lr"]]
    losses = [float(v) if math.isfinite(v) else None for v in finder.results["loss"]]
    suggestion = steepest_fall(lrs, losses, settings["mode"])

    from matplotlib.figure import Figure  # not pyplot: the caller's backend stays as it is

    figure = Figure(figsize=(6, 4), layout="constrained")
    axes = figure.add_subplot()
    finder.plot(ax=axes)
    if suggestion is not None:
        marked = (suggestion, losses[lrs.index(suggestion)])
        axes.plot(*marked, marker="o", markersize=10, color="red", label="suggestion")
        axes.legend()
    axes.set_title(f"{cfg.name}: learning-rate range test ({len(finder.results['lr'])} steps)")
    output.mkdir(parents=True, exist_ok=True)
    figure.savefig(output / "lr_find.png", dpi=120)
    result = {
        "experiment": str(cfg.name),
        "suggestion": suggestion,
        "lightning_suggestion": finder.suggestion(),  # its slope against lr itself
        "settings": settings,
        "batch_size": datamodule.device_batch_size(),
        "optimizer": plain(cfg.optimizer),
        "lr": lrs,
        "loss": losses,
    }
    (output / "lr_find.json").write_text(json.dumps(result, indent=2))
    console.print(
        "No suggestion: too few steps ran before the loss diverged. Raise "
        "lr_find.num_training or lower lr_find.max_lr."
        if suggestion is None
        else f"Suggested: optimizer.lr={suggestion:.2g}, where the smoothed loss falls fastest "
        f"(the experiment has optimizer.lr={cfg.optimizer.lr}). Check it on the curve: a "
        "good peak rate is one where the loss still falls steeply, below where it turns up."
    )
    console.print(f"Curve: {output / 'lr_find.png'}, values: {output / 'lr_find.json'}")
    return result


@app("lr_find")
def main(cfg: DictConfig) -> None:
    print_config(cfg, group_choices())
    lr_find(cfg)


if __name__ == "__main__":
    main()

"""Learning-rate range test: the loss against the learning rate, and a suggested rate.

    make lr-find EXP=ph2_unet [ARGS="lr_find.num_training=200 data.batch_size=16"]
    python -m lightseg.tools.lr_find experiment=demo

The experiment's model trains for ``lr_find.num_training`` steps while the learning rate grows
(exponentially by default) from ``min_lr`` to ``max_lr``, with Lightning's ``Tuner.lr_find``
(Smith, "Cyclical Learning Rates", 2017); the weights are restored afterwards. The suggestion is
where the smoothed loss falls fastest per decade of learning rate (:func:`steepest_fall`). It
is a starting point for ``optimizer.lr`` (the peak of ``scheduler=onecycle``); the batch size
and augmentations should be the ones you will train with, since they change it. The
experiment's scheduler is not used: the test sets the learning rate of every step itself.

Writes ``lr_find.png`` (the curve, the suggestion marked) and ``lr_find.json`` (every step's
learning rate and smoothed loss, and the suggestion) to ``logs/<name>/lr_find/<time>/``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from lightning.pytorch.tuner import Tuner
from omegaconf import DictConfig, open_dict

from lightseg import CONFIG_DIR
from lightseg.config import plain, validate
from lightseg.errors import user_errors
from lightseg.launch import compose_checked
from lightseg.models import check_network
from lightseg.train import build_module, build_trainer, group_choices
from lightseg.utils.console import console, print_config


def steepest_fall(
    lrs: list[float], losses: list[float], mode: str, skip_begin: int = 10, skip_end: int = 1
) -> float | None:
    """The learning rate where the smoothed loss falls fastest, or None with too few points.

    The slope is taken along the axis the sweep is evenly spaced on: log10(lr) for the
    exponential sweep, lr itself for the linear one. (Lightning's ``suggestion()`` always takes
    it against lr, which on an exponential sweep favours the smallest rates that lower the loss
    at all: Lightning issue #21141.) Like Lightning, the first 10 and the last point are skipped.
    """
    points = [
        (lr, loss)
        for lr, loss in zip(lrs, losses, strict=True)
        if loss is not None and math.isfinite(loss)
    ][skip_begin : len(lrs) - skip_end]
    if len(points) < 2:
        return None
    rates = torch.tensor([lr for lr, _ in points], dtype=torch.float64)
    axis = rates.log10() if mode == "exponential" else rates
    slope = torch.gradient(torch.tensor([loss for _, loss in points]), spacing=[axis])[0]
    return float(rates[int(slope.argmin())])


def lr_find(cfg: DictConfig) -> dict[str, Any]:
    """Run the range test described by ``cfg.lr_find``; returns what ``lr_find.json`` holds."""
    validate(cfg, group_choices())
    output = Path(cfg.paths.output_dir)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.locate()
    check_network(
        plain(cfg.model),
        datamodule.task.out_channels,
        datamodule.in_channels,
        datamodule.image_size,
    )
    with open_dict(cfg):
        cfg.scheduler = None  # the range test sets each step's learning rate
    module = build_module(cfg, datamodule.classes)
    trainer = build_trainer(
        cfg,
        max_epochs=-1,  # as many epochs as num_training steps need
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(output),  # the tuner's temporary checkpoint
    )
    settings = plain(cfg.lr_find)
    finder = Tuner(trainer).lr_find(module, datamodule=datamodule, update_attr=False, **settings)
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
    if suggestion is None:
        console.print(
            "No suggestion: too few steps ran before the loss diverged. Raise "
            "lr_find.num_training or lower lr_find.max_lr."
        )
    else:
        console.print(
            f"Suggested: optimizer.lr={suggestion:.2g}, where the smoothed loss falls fastest "
            f"(the experiment has optimizer.lr={cfg.optimizer.lr}). Check it on the curve: a "
            "good peak rate is one where the loss still falls steeply, below where it turns up."
        )
    console.print(f"Curve: {output / 'lr_find.png'}, values: {output / 'lr_find.json'}")
    return result


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="lr_find")
def hydra_main(cfg: DictConfig) -> None:
    with user_errors():
        print_config(cfg, group_choices())
        lr_find(cfg)


def main() -> None:
    """Command line: check the overrides (a mistyped key names the nearest one), then Hydra."""
    with user_errors():
        if not any(a.startswith("-") for a in sys.argv[1:]):
            compose_checked(sys.argv[1:], "lr_find")
    hydra_main()


if __name__ == "__main__":
    main()

"""Temperature scaling: fit the one number that makes a checkpoint's probabilities honest.

    make calibrate CKPT=logs/demo/runs/<time>/checkpoints/best.ckpt
    python -m lightseg.tools.calibrate ckpt_path=... pixels=2000000

T > 0 divides the logits (Guo et al., ICML 2017): the classes stay, over-confidence goes. It
minimises the NLL of a seeded subsample of the **val** split's labelled pixels (the test split
stays unseen), predicted as ``make eval`` does without TTA, by LBFGS over log T. T and the ECE,
Brier and NLL before and after go beside the checkpoint; eval, predict and export apply it.
"""

from __future__ import annotations

import math
from datetime import datetime

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from rich.table import Table

from lightseg import __version__
from lightseg.checkpoints import check_file, load_module, write_calibration
from lightseg.config import app, plain
from lightseg.errors import LightsegError
from lightseg.metrics import PixelCalibration
from lightseg.task import IGNORE_INDEX, Task
from lightseg.tools.eval import read_split, split_of, use_run_data
from lightseg.tools.inference import Segmenter, build_segmenter, checkpoint_paths
from lightseg.utils.console import console
from lightseg.utils.devices import inference_device

#: A fitted T beyond this (or below its inverse) means the fit found no usable optimum.
MAX_TEMPERATURE = 100.0


def nll_sum(logits: torch.Tensor, labels: torch.Tensor, task: Task, temperature) -> torch.Tensor:
    """Summed NLL of pixels' logits [P, out_channels] / ``temperature`` for their classes [P]:
    binary cross-entropy of the foreground logit, or cross-entropy over the classes."""
    scaled = logits / temperature
    if task.binary:
        return F.binary_cross_entropy_with_logits(scaled[:, 0], labels.float(), reduction="sum")
    return F.cross_entropy(scaled, labels, reduction="sum")


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, task: Task) -> float:
    """The T > 0 that minimises the mean NLL of ``logits / T`` (LBFGS over log T, from T = 1)."""
    log_t = torch.zeros((), dtype=torch.float64, device=logits.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")
    logits, count = logits.double(), labels.numel()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nll_sum(logits, labels, task, log_t.exp()) / count
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not (math.isfinite(temperature) and 1 / MAX_TEMPERATURE <= temperature <= MAX_TEMPERATURE):
        raise LightsegError(
            f"The temperature fit ended at T={temperature:.4g}, outside "
            f"[{1 / MAX_TEMPERATURE:g}, {MAX_TEMPERATURE:g}]: on these pixels the model's logits "
            "carry next to no information (no better than predicting one class everywhere, "
            "e.g. trained too briefly) or all are right with certainty. Such a T would flatten "
            "or harden every probability, so none is stored: train the model further, or "
            "fit on more pixels (pixels=...)."
        )
    return temperature


class SplitScore:
    """Calibration and mean NLL over every labelled pixel of a split, at one temperature."""

    def __init__(self, task: Task) -> None:
        self.task, self.calibration = task, PixelCalibration(task.num_classes)
        self.nll, self.pixels = 0.0, 0

    def update(self, segmenter: Segmenter, logits: torch.Tensor, target: torch.Tensor) -> None:
        """``logits`` [1, out, H, W] as the segmenter computes them, ``target`` [1, H, W]."""
        # the probabilities as eval gets them, to the bit: float32, on the CPU
        self.calibration.update(segmenter.probabilities(logits).cpu(), target)
        labelled = target[0] != IGNORE_INDEX
        pixels = logits[0].movedim(0, -1)[labelled.to(logits.device)]
        labels = target[0][labelled].to(logits.device)
        self.nll += float(nll_sum(pixels.double(), labels, self.task, segmenter.temperature))
        self.pixels += int(labelled.sum())

    def values(self) -> dict[str, float]:
        values = {k: float(v) for k, v in self.calibration.compute().items()}
        return {**values, "nll": self.nll / max(1, self.pixels)}


def calibrate(cfg: DictConfig, data_from_run: bool = True) -> dict:
    """Fit ``cfg.ckpt_path``'s temperature on ``cfg.split``; returns what the sidecar holds."""
    paths = checkpoint_paths(plain(cfg.ckpt_path))
    if len(paths) > 1:
        raise LightsegError(
            f"make calibrate fits one checkpoint at a time, got {len(paths)}. Calibrate each "
            "member (make calibrate CKPT=<member>): an ensemble applies each member's own."
        )
    checkpoint = check_file(paths[0])
    device = inference_device(str(cfg.get("device", "auto")))
    options = dict(plain(cfg.get("inference")) or {})
    options.update(flip=False, scales=[1.0], temperature=1.0)  # plain logits, as trained
    segmenter = build_segmenter(load_module(checkpoint, device), options)
    task = segmenter.task
    datamodule, samples = split_of(cfg, data_from_run, checkpoint, segmenter)
    if not samples:
        raise LightsegError(f"split={cfg.split} holds no images to fit the temperature on.")
    wanted = int(cfg.pixels)
    if wanted < 1:
        raise LightsegError(f"pixels={wanted} must be at least 1 (labelled pixels to fit on).")
    per_image = math.ceil(wanted / len(samples))
    generator = torch.Generator().manual_seed(int(cfg.seed))

    def split_logits(description: str):
        """Each image's logits [1, out, H, W] (the segmenter's, no TTA) and mask [1, H, W]."""
        for image, target in read_split(datamodule, samples, description):
            yield segmenter.logits(segmenter.normalize(image)), target

    before, chosen_logits, chosen_labels = SplitScore(task), [], []
    for logits, target in split_logits(f"Predicting {len(samples)} {cfg.split} images"):
        before.update(segmenter, logits, target)
        labelled = (target[0] != IGNORE_INDEX).flatten().nonzero()[:, 0]
        keep = labelled[torch.randperm(len(labelled), generator=generator)[:per_image]]
        chosen_logits.append(logits[0].flatten(1)[:, keep.to(logits.device)].T.cpu())
        chosen_labels.append(target.flatten()[keep])
    logits, labels = torch.cat(chosen_logits), torch.cat(chosen_labels)
    if not len(labels):
        raise LightsegError(
            f"The {cfg.split} split of '{checkpoint}' has no labelled pixels (all are "
            f"{IGNORE_INDEX}, ignored): there is nothing to fit the temperature on."
        )
    segmenter.temperature = fit_temperature(logits, labels, task)

    after = SplitScore(task)
    for logits, target in split_logits(f"Scoring T={segmenter.temperature:.3f}"):
        after.update(segmenter, logits, target)
    old, new = before.values(), after.values()
    record = {
        "temperature": segmenter.temperature,
        "split": str(cfg.split),
        "images": len(samples),
        "pixels_fitted": len(labels),
        "pixels_scored": after.pixels,
        "seed": int(cfg.seed),
        **{f"{name}_before": value for name, value in old.items()},
        **{f"{name}_after": value for name, value in new.items()},
        "n_bins": before.calibration.n_bins,
        "inference": {k: getattr(segmenter, k) for k in ("mode", "image_size", "stride")},
        "created": datetime.now().isoformat(timespec="seconds"),
        "lightseg": __version__,
    }
    path = write_calibration(checkpoint, record)
    title = f"{cfg.split} split: {len(samples)} images, {after.pixels} labelled pixels "
    title += f"({len(labels)} fitted)"
    table = Table("", "before (T=1)", f"after (T={segmenter.temperature:.4f})", title=title)
    for name in ("ece", "brier", "nll"):
        table.add_row(name, f"{old[name]:.4f}", f"{new[name]:.4f}")
    console.print(table)
    console.print(f"Temperature written to {path}: eval, predict and export apply it.")
    return {**record, "path": str(path)}


@app("calibrate")
def main(cfg: DictConfig) -> None:
    calibrate(cfg, use_run_data(cfg))


if __name__ == "__main__":
    main()

"""Time to a target validation Dice: lightseg's demo experiment against a plain PyTorch loop.

The plain loop is what a researcher would write for this data without lightseg, after the
reference recipe of issue 14: smp's U-Net / ResNet-18 from scratch, AdamW with a one-cycle
schedule (peak 3e-3), batch 16, BCE + Dice, horizontal and vertical flips, images decoded from
their files and normalised by the loader every epoch. lightseg runs the experiment as
``make train`` does, with its own recipe and data path (cache, uint8 batches), minus what the
plain loop does not do either: checkpoint files, overlays and progress output.

Both train on the same split at the same size with the same number of loader workers, validate
after every epoch, and stop at the first epoch whose validation Dice (foreground, pooled over
the split's pixels, as ``val/dice``) reaches the target. The clock runs from the start of
training (networks are built before) to the end of that validation. Runs alternate between the
two, over several seeds; the medians are compared (ratio = plain / lightseg: >= 1 means lightseg
is there no later).
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Any

import albumentations as A
import segmentation_models_pytorch as smp
import torch
from albumentations.pytorch import ToTensorV2
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, open_dict
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lightseg.data import SegmentationDataModule
from lightseg.experiment import build

#: The plain loop's recipe (the reference loop of issue 14).
PLAIN = {"max_lr": 3e-3, "batch_size": 16}


class ReachTarget(Callback):
    """Stops training once ``monitor`` reaches ``target``; keeps when and at which epoch."""

    def __init__(self, monitor: str, target: float) -> None:
        self.monitor, self.target = monitor, target
        self.start = time.perf_counter()
        self.reached_s: float | None = None
        self.epoch: int | None = None
        self.history: list[float] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = float(trainer.callback_metrics[self.monitor])
        self.history.append(value)
        if value >= self.target and self.reached_s is None:
            self.reached_s, self.epoch = time.perf_counter() - self.start, trainer.current_epoch
            trainer.should_stop = True


def lightseg_time(cfg: DictConfig, target: float, seed: int) -> dict[str, Any]:
    """Seconds until lightseg's run of ``cfg`` reaches ``target`` validation Dice."""
    with open_dict(cfg):
        cfg.seed = cfg.data.seed = seed
    experiment = build(  # seeded as `make train` seeds a run
        cfg,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    experiment.datamodule.prepare_data()  # the cache, as every run after the first finds it
    stopper = ReachTarget(str(cfg.monitor), target)  # its clock starts here, just before fit
    experiment.trainer.callbacks.append(stopper)
    experiment.trainer.fit(experiment.module, datamodule=experiment.datamodule)
    return {"seconds": stopper.reached_s, "epoch": stopper.epoch, "val_dice": stopper.history}


class PlainDataset(Dataset):
    """Decodes each sample from its files and applies ``transform`` (normalisation included)."""

    def __init__(self, datamodule: SegmentationDataModule, split: str, transform) -> None:
        self.source, self.samples = datamodule.source, datamodule.splits[split]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.source.read(self.samples[index])
        out = self.transform(image=image, mask=mask)
        return out["image"], out["mask"].float()


@torch.no_grad()
def dice_counts(net: nn.Module, loader: DataLoader, device: torch.device) -> torch.Tensor:
    """``[images, 3]``: true positives, false positives and false negatives of each image."""
    net.eval()
    counts = []
    for images, masks in loader:
        predicted = net(images.to(device))[:, 0] > 0
        truth = masks.to(device) > 0.5
        counts += [
            torch.stack([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]).cpu()
            for p, t in zip(predicted, truth, strict=True)
        ]
    net.train()
    return torch.stack(counts).double()


def pooled_dice(net: nn.Module, loader: DataLoader, device: torch.device) -> float:
    tp, fp, fn = dice_counts(net, loader, device).sum(0).tolist()
    return 2 * tp / max(1, 2 * tp + fp + fn)


def per_image_dice(net: nn.Module, loader: DataLoader, device: torch.device) -> float:
    """Mean over images of each image's Dice (1 where truth and prediction are both empty)."""
    tp, fp, fn = dice_counts(net, loader, device).T
    denominator = 2 * tp + fp + fn
    dice = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.ones_like(tp))
    return float(dice.mean())


def plain_time(
    cfg: DictConfig, target: float, seed: int, epochs: int, test: bool = False
) -> dict[str, Any]:
    """Seconds until the plain loop reaches ``target`` validation Dice (None: not in budget);
    ``test``: also the final network's test Dice, pooled and per image."""
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.locate()
    height, width = datamodule.image_size
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = smp.Unet("resnet18", encoder_weights=None, classes=1).to(device)
    bce, dice = nn.BCEWithLogitsLoss(), smp.losses.DiceLoss("binary")
    history: list[float] = []
    start = time.perf_counter()
    resize, finish = A.Resize(height, width), [A.Normalize(), ToTensorV2()]
    train = PlainDataset(
        datamodule, "train", A.Compose([resize, A.HorizontalFlip(), A.VerticalFlip(), *finish])
    )
    val = PlainDataset(datamodule, "val", A.Compose([resize, *finish]))
    workers = datamodule.num_workers
    loader = DataLoader(
        train,
        batch_size=PLAIN["batch_size"],
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    val_loader = DataLoader(
        val, batch_size=PLAIN["batch_size"], num_workers=workers, persistent_workers=workers > 0
    )
    optimizer = torch.optim.AdamW(net.parameters(), lr=PLAIN["max_lr"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=PLAIN["max_lr"], total_steps=epochs * len(loader)
    )
    for epoch in range(epochs):
        for images, masks in loader:
            images, masks = images.to(device), masks.to(device)
            logits = net(images)
            loss = bce(logits[:, 0], masks) + dice(logits, masks[:, None])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        history.append(pooled_dice(net, val_loader, device))
        if history[-1] >= target:
            return {"seconds": time.perf_counter() - start, "epoch": epoch, "val_dice": history}
    result = {"seconds": None, "epoch": None, "val_dice": history, "steps": epochs * len(loader)}
    if test:
        tested = PlainDataset(datamodule, "test", A.Compose([resize, *finish]))
        loader = DataLoader(tested, batch_size=PLAIN["batch_size"], num_workers=workers)
        result["test_dice"] = pooled_dice(net, loader, device)
        result["test_dice_per_image"] = per_image_dice(net, loader, device)
    return result


def time_to_accuracy(cfg: DictConfig, target: float, seeds: list[int]) -> dict[str, Any]:
    """Alternating runs over ``seeds``; medians of the seconds each path took to ``target``."""
    epochs = int(cfg.trainer.max_epochs)  # the same budget for both
    runs: dict[str, list[dict[str, Any]]] = {"plain": [], "lightseg": []}
    for index, seed in enumerate(seeds):
        for name in ("plain", "lightseg") if index % 2 == 0 else ("lightseg", "plain"):
            if name == "plain":
                run = plain_time(cfg, target, seed, epochs)
            else:
                run = lightseg_time(copy.deepcopy(cfg), target, seed)
            runs[name].append({"seed": seed, **run})
    # A run that never reached the target counts as slower than every run that did.
    medians = {
        name: statistics.median(math.inf if r["seconds"] is None else r["seconds"] for r in rs)
        for name, rs in runs.items()
    }
    plain_s, lightseg_s = (None if math.isinf(medians[n]) else medians[n] for n in runs)
    return {
        "target": target,
        "monitor": str(cfg.monitor),
        "epoch_budget": epochs,
        "plain_s": plain_s,
        "lightseg_s": lightseg_s,
        "ratio": plain_s / lightseg_s if plain_s and lightseg_s else None,
        "plain_recipe": f"AdamW + OneCycle max lr {PLAIN['max_lr']}, batch {PLAIN['batch_size']}, "
        "BCE + Dice, flips; decoded and normalised in the loader",
        "runs": runs,
    }

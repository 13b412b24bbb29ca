"""A fixed set of validation images with true and predicted masks, every few epochs.

The same pictures go to W&B (as mask overlays with named classes, toggled in the UI), to
TensorBoard, and to PNG files in the run folder for people who use neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image, ImageDraw

from lightseg.task import IGNORE_INDEX

GAP = 2  # white pixels between panels


def class_colors() -> np.ndarray:
    """RGB colour per mask value 0..255 (255 = ignore): class index bits spread over RGB.

    Each class index's bits are dealt out over the high bits of R, G and B, so neighbouring
    indices get clearly different colours; index 0 (background) is black.
    """
    colors = np.zeros((256, 3), np.uint8)
    for index in range(256):
        value, rgb = index, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        colors[index] = rgb
    return colors


def overlay(image: np.ndarray, mask: np.ndarray, colors: np.ndarray, alpha: float) -> np.ndarray:
    """Blend class colours into ``image`` (uint8 HxWx3) wherever ``mask`` is not background."""
    out = image.astype(np.float32)
    shown = mask != 0
    out[shown] = (1 - alpha) * out[shown] + alpha * colors[mask[shown]].astype(np.float32)
    return np.round(out).astype(np.uint8)


def overlay_grid(
    images: np.ndarray,
    truths: np.ndarray,
    predictions: np.ndarray,
    classes: Sequence[str],
    alpha: float = 0.5,
) -> np.ndarray:
    """One row per sample: image | truth overlay | prediction overlay; a legend underneath."""
    colors = class_colors()
    rows = []
    for image, truth, prediction in zip(images, truths, predictions, strict=True):
        panels = [
            image,
            overlay(image, truth, colors, alpha),
            overlay(image, prediction, colors, alpha),
        ]
        rows.append(_join(panels, axis=1))
    grid = _join(rows, axis=0)
    return _with_legend(grid, classes, colors)


def _join(parts: list[np.ndarray], axis: int) -> np.ndarray:
    shape = list(parts[0].shape)
    shape[axis] = GAP
    gap = np.full(shape, 255, np.uint8)
    joined = [parts[0]]
    for part in parts[1:]:
        joined += [gap, part]
    return np.concatenate(joined, axis=axis)


def _with_legend(grid: np.ndarray, classes: Sequence[str], colors: np.ndarray) -> np.ndarray:
    line = 14
    entries = [(name, colors[i]) for i, name in enumerate(classes) if i != 0]
    entries.append(("ignore", colors[IGNORE_INDEX]))
    header = "columns: image | truth | prediction"
    canvas = Image.new(
        "RGB", (grid.shape[1], grid.shape[0] + line * (len(entries) + 1) + 4), "white"
    )
    canvas.paste(Image.fromarray(grid), (0, 0))
    draw = ImageDraw.Draw(canvas)
    top = grid.shape[0] + 2
    draw.text((2, top), header, fill="black")
    for row, (name, color) in enumerate(entries, start=1):
        y = top + row * line
        draw.rectangle((2, y + 2, 11, y + 11), fill=tuple(int(c) for c in color))
        draw.text((16, y), name, fill="black")
    return np.asarray(canvas)


def to_uint8_images(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> np.ndarray:
    """Undo the normalisation of [N, 3, H, W] batches: uint8 [N, H, W, 3] for display."""
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    pixels = (images.float().cpu() * std_t + mean_t).clamp(0, 1) * 255
    return pixels.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


class PredictionOverlays(Callback):
    """After validation every ``every_n_epochs`` epochs (and the last), show the first
    ``num_images`` validation samples with their true and predicted masks."""

    def __init__(
        self,
        folder: str | Path,
        num_images: int = 6,
        every_n_epochs: int = 5,
        alpha: float = 0.5,
        key: str = "val/predictions",
    ) -> None:
        self.folder = Path(folder)
        self.num_images, self.every_n_epochs = int(num_images), max(1, int(every_n_epochs))
        self.alpha, self.key = float(alpha), key

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        return epoch % self.every_n_epochs == 0 or epoch >= (trainer.max_epochs or 0)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        if not self._due(trainer) or self.num_images <= 0:
            return
        loader = trainer.val_dataloaders
        dataset = (loader[0] if isinstance(loader, Sequence) else loader).dataset
        samples = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
        batch = torch.stack([s["image"] for s in samples])
        with torch.no_grad(), trainer.precision_plugin.val_step_context():
            logits = pl_module(trainer.precision_plugin.convert_input(batch.to(pl_module.device)))
        predictions = pl_module.task.predict(logits).cpu().numpy().astype(np.uint8)
        truths = torch.stack([s["mask"] for s in samples]).numpy().astype(np.uint8)
        norm = pl_module.hparams.normalization
        images = to_uint8_images(batch, norm["mean"], norm["std"])
        classes = list(pl_module.task.classes)
        grid = overlay_grid(images, truths, predictions, classes, self.alpha)

        self.folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(self.folder / f"epoch_{trainer.current_epoch:03d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                labels = {i: name for i, name in enumerate(classes)} | {IGNORE_INDEX: "ignore"}
                masks = [
                    {
                        "ground_truth": {"mask_data": truth, "class_labels": labels},
                        "predictions": {"mask_data": prediction, "class_labels": labels},
                    }
                    for truth, prediction in zip(truths, predictions, strict=True)
                ]
                captions = [str(s["id"]) for s in samples]
                logger.log_image(
                    self.key, list(images), step=trainer.global_step, masks=masks, caption=captions
                )
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(
                    self.key, grid, global_step=trainer.global_step, dataformats="HWC"
                )

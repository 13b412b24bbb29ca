"""A fixed set of validation images with true and predicted masks, every few epochs: to W&B (as
mask overlays), to TensorBoard, and as PNG files in the run folder for people who use neither."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image

from lightseg.task import IGNORE_INDEX
from lightseg.visualize import display_image, overlay_grid


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

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        due = epoch % self.every_n_epochs == 0 or epoch >= (trainer.max_epochs or 0)
        if not due or self.num_images <= 0:
            return
        loader = trainer.val_dataloaders
        dataset = (loader[0] if isinstance(loader, Sequence) else loader).dataset
        samples = [dataset[i] for i in range(min(self.num_images, len(dataset)))]
        batch = torch.stack([s["image"] for s in samples])  # as the loaders deliver: unnormalised
        with torch.no_grad(), trainer.precision_plugin.val_step_context():
            inputs = pl_module.normalize(batch.to(pl_module.device))
            logits = pl_module(trainer.precision_plugin.convert_input(inputs))
        predictions = pl_module.task.predict(logits).cpu().numpy().astype(np.uint8)
        truths = torch.stack([s["mask"] for s in samples]).numpy().astype(np.uint8)
        images = np.stack([display_image(image) for image in batch.permute(0, 2, 3, 1).numpy()])
        classes = list(pl_module.task.classes)
        grid = overlay_grid(images, truths, predictions, classes, self.alpha)

        self.folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(self.folder / f"epoch_{trainer.current_epoch:03d}.png")
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                labels = dict(enumerate(classes)) | {IGNORE_INDEX: "ignore"}
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

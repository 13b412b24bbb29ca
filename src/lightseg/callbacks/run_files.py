"""Give the loggers the run's record: the resolved config, for W&B the run's files, and for a
resumed CSV log the rows the resume replays removed from its earlier parts."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

from lightseg.checkpoints import checkpoint_position
from lightseg.runs import RunFolder
from lightseg.runs.folder import CONFIG, RUN_INFO, SPLITS, read_yaml
from lightseg.runs.snapshot import GIT_DIFF, PACKAGES, UNTRACKED
from lightseg.utils.loggers import drop_replayed_rows, upload_files

log = logging.getLogger(__name__)

#: Files of the run folder (globs) that go to the W&B run's Files tab.
RUN_FILES = (CONFIG, RUN_INFO, GIT_DIFF, UNTRACKED, PACKAGES, f"{SPLITS}/*.txt")


class LogRunFiles(Callback):
    """When fitting starts: ``config.yaml`` as every logger's hyperparameters; for W&B also the
    git state and the run's record files. Rank 0 of the training processes, after the split
    lists are written: a ``ddp_spawn`` logger writes nothing from the launching process."""

    def __init__(self, folder: str | Path, files: tuple[str, ...] = RUN_FILES) -> None:
        self.folder, self.files = Path(folder), tuple(files)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        folder = RunFolder(self.folder)
        config, info = read_yaml(folder.config) or {}, folder.info() or {}
        # the loops are restored later: the checkpoint says the step a resume replays from
        step = checkpoint_position(trainer.ckpt_path)["step"] if trainer.ckpt_path else None
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger) and step is not None:
                drop_replayed_rows(logger, step)
            logger.log_hyperparams(config)
            if not isinstance(logger, WandbLogger):
                continue
            run = logger.experiment
            if run.settings.mode == "online":
                log.info("W&B run: %s", run.url)
            run.config.update(
                {"git": info.get("git"), "lightseg_version": info.get("lightseg")},
                allow_val_change=True,
            )
            # a ddp_spawn rank's W&B run (attached to the launching process's) would copy them
            # under the working directory, not into the run: the launching process uploads them
            if not isinstance(trainer.strategy.launcher, _MultiProcessingLauncher):
                upload_files(run, self.folder, self.files)

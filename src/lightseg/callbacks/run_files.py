"""Send a run's record (resolved config, run_info.json, split lists) to W&B."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger

from lightseg.runs import read_run_info
from lightseg.runs.folder import CONFIG, RUN_INFO, SPLITS
from lightseg.runs.snapshot import GIT_DIFF, PACKAGES, UNTRACKED

#: Files of the run folder (globs) that go to the W&B run's Files tab.
RUN_FILES = (CONFIG, RUN_INFO, GIT_DIFF, UNTRACKED, PACKAGES, f"{SPLITS}/*.txt")


class LogRunFiles(Callback):
    """When fitting starts: the run's record into the W&B run's files, git state into its config.

    Runs after the data module has written the split lists. Nothing to do without a W&B
    logger: the same files are already in the run folder.
    """

    def __init__(self, folder: str | Path, files: tuple[str, ...] = RUN_FILES) -> None:
        self.folder, self.files = Path(folder), tuple(files)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers or not trainer.is_global_zero:
            return
        info = read_run_info(self.folder) or {}
        for logger in loggers:
            run = logger.experiment
            run.config.update(
                {"git": info.get("git"), "lightseg_version": info.get("lightseg")},
                allow_val_change=True,
            )
            # Copies inside the W&B run's own folder: W&B then uploads them as they are,
            # instead of symlinking each file and warning that it did.
            files = Path(run.dir)
            for pattern in self.files:
                found = sorted(self.folder.glob(pattern))
                for path in found:
                    copy = files / path.relative_to(self.folder)
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, copy)
                if found:
                    run.save(str(files / pattern), base_path=str(files), policy="now")

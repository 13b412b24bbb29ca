"""Helpers for tests that run training: signals and NaNs on cue, the CLI in this process."""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from pathlib import Path

import lightning as L
from hydra.core.global_hydra import GlobalHydra

from lightseg import checkpoints
from lightseg.train import main


class SignalAt(L.Callback):
    """Send ``signum`` to this process when batch ``batch_idx`` of ``epoch`` starts."""

    def __init__(self, epoch: int, batch_idx: int, signum: int = signal.SIGTERM) -> None:
        self.epoch, self.batch_idx, self.signum = epoch, batch_idx, signum

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch_idx):
            os.kill(os.getpid(), self.signum)


class PoisonAt(L.Callback):
    """Put a NaN into the images of batch ``batch_idx`` of ``epoch`` (of process ``rank``)."""

    def __init__(self, epoch: int, batch_idx: int, rank: int | None = None) -> None:
        self.epoch, self.batch_idx, self.rank = epoch, batch_idx, rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        mine = self.rank in (None, trainer.global_rank)
        if mine and (trainer.current_epoch, batch_idx) == (self.epoch, self.batch_idx):
            batch["image"][0, 0, 0, 0] = float("nan")


class FullDisk:
    """A file on a disk with ``room`` bytes left: a write past it fails as the kernel's does."""

    def __init__(self, file, room: int = 4096) -> None:
        self.file, self.room = file, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.file.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()


def full_disk_open(path, mode="r", *args, room: int = 4096, **kwargs):
    return FullDisk(open(path, mode, *args, **kwargs), room)


class DiskFullFrom(L.Callback):
    """From ``epoch`` on, the checkpoint files lightseg writes hit a full disk (the caller
    restores ``lightseg.checkpoints.open``, e.g. with monkeypatch)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            checkpoints.open = full_disk_open


def run_cli(monkeypatch, *args: str) -> None:
    """``python -m lightseg.train ARGS`` in this process (Hydra included)."""
    monkeypatch.setattr(sys, "argv", ["lightseg.train", *args])
    try:
        main()
    finally:
        GlobalHydra.instance().clear()


def run_app(main, *args: str) -> None:
    """``python -m <tool> ARGS`` in this process, as the command line runs the Hydra app."""
    argv = sys.argv
    sys.argv = ["tool", *args]
    try:
        main()
    finally:
        sys.argv = argv
        GlobalHydra.instance().clear()


def tiny_cli_run(tmp_path: Path, data_dir: Path) -> list[str]:
    """Overrides for a one-epoch, one-batch demo run at 64x64 with logs under ``tmp_path``."""
    return [
        "experiment=demo",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "logger=csv",
        "data.num_workers=0",
        "data.batch_size=4",
        "data.image_size=[64,64]",
        "data.source.num_cases=20",
        "print_config=false",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path / 'logs'}",
    ]


class MarkAt(L.Callback):
    """Write ``path`` when batch ``batch_idx`` of ``epoch`` (of ``stage``) starts, then sleep:
    the moment a test signals a training subprocess, with its loader workers running."""

    def __init__(
        self,
        path: str,
        epoch: int = 0,
        batch_idx: int = 0,
        stage: str = "fit",
        sleep: float = 3.0,
        rank: int | None = None,
    ) -> None:
        self.path, self.epoch, self.batch_idx = Path(path), epoch, batch_idx
        self.stage, self.sleep, self.rank = stage, sleep, rank

    def _mark(self, trainer, batch_idx: int, stage: str) -> None:
        epoch = trainer.current_epoch if stage == "fit" else self.epoch  # test: after training
        at = (epoch, batch_idx, stage)
        mine = self.rank in (None, trainer.global_rank)  # None: the first process to get there
        if at == (self.epoch, self.batch_idx, self.stage) and mine and not self.path.exists():
            self.path.write_text(str(os.getpid()))
            time.sleep(self.sleep)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._mark(trainer, batch_idx, "fit")

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._mark(trainer, batch_idx, "test")

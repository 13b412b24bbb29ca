"""Surviving interruptions: save on a stop signal, stop on a non-finite loss, resume exactly."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from lightseg.checkpoints import random_states, set_random_states
from lightseg.errors import LightsegError, TrainingInterrupted
from lightseg.runs import RunFolder
from lightseg.utils.signals import stop_signals

log = logging.getLogger(__name__)


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where ``last.ckpt`` is kept (the file resumes start from): the checkpoint callback named
    ``last`` (configs/callbacks/default.yaml), else the run folder's."""
    for callback in trainer.checkpoint_callbacks:
        if getattr(callback, "filename", None) == "last" and getattr(callback, "dirpath", None):
            return Path(callback.dirpath) / f"last{callback.FILE_EXTENSION}"
    return RunFolder(trainer.default_root_dir).last


def requeue_slurm_job() -> bool:
    """Put this SLURM job back in the queue (``scontrol requeue``); False outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    job = f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except OSError as error:
        log.warning("Could not requeue SLURM job %s: %s", job, error)
        return False
    if done.returncode:
        log.warning("scontrol requeue %s failed: %s", job, done.stderr.strip())
    return done.returncode == 0


class CheckpointOnSignal(Callback):
    """On SIGTERM, SIGINT or SIGUSR1: finish the batch, save ``last.ckpt``, stop cleanly.

    The checkpoint holds the position inside the epoch, so a resumed run continues with the next
    batch (a signal during validation lets the epoch end first; one while the best checkpoint is
    evaluated after training stops at once). The run ends ``interrupted``, exit code 128 +
    signal; a second Ctrl+C stops without saving; in SLURM, SIGUSR1 also requeues the job. This
    replaces Lightning's handling, which stops without saving or saves mid-step in the handler.
    """

    def __init__(self, requeue_on_slurm: bool = True) -> None:
        self.signals = stop_signals()
        self.requeue_on_slurm = requeue_on_slurm
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame) -> None:
        if signum == signal.SIGINT and self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        log.warning("Received %s: stopping after this batch.", signal.Signals(signum).name)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # Installed after Lightning's own handlers (registered when the trainer starts).
        if threading.current_thread() is not threading.main_thread():
            log.warning("Not in the main thread: stop signals will not save a checkpoint.")
            return
        self.received = None
        for signum in self.signals:
            self._previous.setdefault(signum, signal.signal(signum, self._on_signal))

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()

    def _stop_requested(self, trainer: L.Trainer) -> bool:
        # Every rank must agree, or one would wait forever for the others to save.
        return trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if self._stop_requested(trainer) and batch_idx + 1 < trainer.num_training_batches:
            self._save_and_stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stop_requested(trainer):
            self._save_and_stop(trainer)

    def _evaluation_batch_end(self, trainer: L.Trainer) -> None:
        if trainer.state.fn != "fit" and self._stop_requested(trainer):
            signum = self.received or signal.SIGTERM
            raise TrainingInterrupted(
                f"Stopped by {signal.Signals(signum).name} while evaluating the best checkpoint "
                "after training. Training itself is complete (checkpoints/last.ckpt holds its "
                "last epoch, best.ckpt its best); metrics.json was not written. Run the same "
                "command with ckpt_path=last to evaluate again.",
                signum,
            )

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        self._evaluation_batch_end(trainer)

    on_test_batch_end = on_validation_batch_end

    def _save_and_stop(self, trainer: L.Trainer) -> None:
        path = last_checkpoint_path(trainer)
        trainer.save_checkpoint(path, weights_only=False)  # the full state: it is resumed
        signum = self.received or signal.SIGTERM
        requeued = (
            signum == getattr(signal, "SIGUSR1", None)
            and self.requeue_on_slurm
            and trainer.is_global_zero
            and requeue_slurm_job()
        )
        raise TrainingInterrupted(
            f"Training stopped by {signal.Signals(signum).name} in epoch {trainer.current_epoch} "
            f"at global step {trainer.global_step}; its state is saved in '{path}'. "
            + ("The SLURM job is requeued. " if requeued else "")
            + "Continue it with the same command plus ckpt_path=last, or put resume=auto in job "
            "scripts that may be pre-empted.",
            signum,
        )


class StopOnNonFiniteLoss(Callback):
    """Stop before a NaN or infinite loss reaches the weights; saves nothing after it."""

    def __init__(self) -> None:
        self.batch_idx = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.batch_idx = batch_idx

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        if not trainer.strategy.reduce_boolean_decision(not finite, all=False):
            return
        what = "NaN" if bool(torch.isnan(loss.detach()).any()) else "infinite"
        last = last_checkpoint_path(trainer)
        kept = (
            f"The last good checkpoint is '{last}'"
            if last.is_file()
            else "No checkpoint had been saved yet"
        )
        raise LightsegError(
            f"Training stopped: the loss became {what} at global step {trainer.global_step} "
            f"(epoch {trainer.current_epoch}, batch {self.batch_idx}). {kept}; nothing after it "
            "was saved. Usual fixes: a lower optimizer.lr, trainer.gradient_clip_val=1.0, "
            "trainer.precision=32-true instead of 16-mixed, or masks holding values other than "
            "class indices and 255."
        )


class RandomStateCheckpoint(Callback):
    """Keeps the global random states in every checkpoint and restores them on resume: the
    model's own randomness (dropout) needs them; data order does not (lightseg.data.sampling)."""

    def state_dict(self) -> dict[str, Any]:
        return random_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_random_states(state_dict)

"""Surviving interruptions: save on a stop signal, stop on a non-finite loss, resume exactly."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing import resource_tracker
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher

from lightseg.checkpoints import random_states, set_random_states
from lightseg.errors import LightsegError, TrainingInterrupted, lightseg_cause
from lightseg.runs import RunFolder
from lightseg.utils.signals import stop_signals

log = logging.getLogger(__name__)


def last_checkpoint_path(trainer: L.Trainer) -> Path:
    """Where ``last.ckpt`` (what resumes start from) is kept: the checkpoint callback named
    ``last``'s folder, else the run folder's."""
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
    """On SIGTERM, SIGINT or SIGUSR1: finish the batch, save ``last.ckpt`` (with the position in
    the epoch), stop with exit code 128 + signal; a second Ctrl+C stops at once, unsaved; in SLURM,
    SIGUSR1 also requeues the job. Lightning's own handling stops without saving (and under DDP
    broadcasts from the signal handler, breaking the collective in progress)."""

    def __init__(self, requeue_on_slurm: bool = True, stop_timeout: float = 30.0) -> None:
        self.signals = stop_signals()
        self.requeue_on_slurm = requeue_on_slurm
        self.stop_timeout = stop_timeout
        self.received: int | None = None
        self.received_at = 0.0
        self._agreed: Callable[[], float] | None = None
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame) -> None:
        # a launcher (torchrun, srun) passes the terminal's Ctrl+C on at once: the same Ctrl+C
        repeated = self.received == signal.SIGINT and time.monotonic() - self.received_at < 0.2
        if signum == signal.SIGINT and self.received is not None and not repeated:
            raise TrainingInterrupted(
                "Stopped at once by a second Ctrl+C (SIGINT), without saving where it was. "
                "A run that saved checkpoints/last.ckpt before continues from there with the "
                "same command plus ckpt_path=last.",
                signum,
            )
        if self.received is None:
            self.received, self.received_at = signum, time.monotonic()
        log.warning("Received %s: stopping after this batch.", signal.Signals(signum).name)

    def _take_over_signals(self, *_, **__) -> None:
        # Lightning registers its handlers after ``setup``: each stage's start takes them back
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.signals:
            self._previous.setdefault(signum, signal.signal(signum, self._on_signal))

    on_train_start = on_validation_start = on_test_start = _take_over_signals

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("Not in the main thread: stop signals will not save a checkpoint.")
        self.received, self._agreed = None, None
        self._take_over_signals()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
        self._previous.clear()

    on_exception = teardown  # (trainer, pl_module, exception)

    def _stop_requested(self, trainer: L.Trainer) -> bool:
        # Every rank must agree, or one would wait forever for the others to save.
        return trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        self._agreed = any_rank_later(trainer, torch.tensor(float(self.received is not None)))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        agreed, self._agreed = self._agreed, None
        stop = agreed() > 0 if agreed else self._stop_requested(trainer)
        if stop and batch_idx + 1 < trainer.num_training_batches:
            self._save_and_stop(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._stop_requested(trainer):
            self._save_and_stop(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *_) -> None:
        # in fit, validation ends its epoch first; evaluating the best checkpoint stops at once
        if trainer.state.fn != "fit" and self._stop_requested(trainer):
            signum = self.received or signal.SIGTERM
            raise TrainingInterrupted(
                f"Stopped by {signal.Signals(signum).name} while evaluating the best checkpoint "
                "after training. Training itself is complete (checkpoints/last.ckpt holds its "
                "last epoch, best.ckpt its best); metrics.json was not written. Run the same "
                "command with ckpt_path=last to evaluate again.",
                signum,
            )

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


@contextlib.contextmanager
def launcher_stops(trainer: L.Trainer) -> Iterator[None]:
    """Around fit / validate / test in the process that starts ddp_spawn's ranks (no training
    loop here): a stop signal ends the job, not this process alone with its ranks orphaned. It
    passes SIGTERM and SIGUSR1 on (``kill <pid>`` signals this process alone), waits for the ranks
    to save and end, and raises their ``TrainingInterrupted``. Ranks alive ``stop_timeout`` s after
    the signal are killed: one that has saved can hang waiting for its loader workers."""
    callback = next((c for c in trainer.callbacks if isinstance(c, CheckpointOnSignal)), None)
    launcher = trainer.strategy.launcher
    if (
        callback is None
        or not isinstance(launcher, _MultiProcessingLauncher)
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    received: list[int] = []
    deadline = threading.Timer(callback.stop_timeout, launcher.kill, (signal.SIGKILL,))
    deadline.daemon = True

    def stopped(signum: int, error: BaseException | None = None) -> TrainingInterrupted:
        cause = lightseg_cause(error)
        if cause is not None:
            return TrainingInterrupted(str(cause), signum)
        return TrainingInterrupted(
            f"Training stopped by {signal.Signals(signum).name}. The last state saved is in "
            f"'{last_checkpoint_path(trainer)}'; continue with the same command plus "
            f"ckpt_path=last. (Ranks still running {callback.stop_timeout:g} s after a stop "
            "signal are killed.)",
            signum,
        )

    def on_signal(signum: int, frame) -> None:
        if not received:
            name = signal.Signals(signum).name
            log.warning("Received %s: waiting for the ranks to save and stop.", name)
            deadline.start()
        received.append(signum)
        if not any(process.is_alive() for process in launcher.procs):  # between launches
            raise stopped(signum)
        if signum != signal.SIGINT:  # Ctrl+C reaches every process of the terminal's group
            launcher.kill(signum)

    # Python's resource tracker, which the ranks share, ignores SIGINT and SIGTERM only: a
    # SIGUSR1 to the group would kill it, and its successor print a KeyError traceback.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, callback.signals)
    try:
        resource_tracker.ensure_running()  # started now, it inherits the blocked signals
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    previous = {signum: signal.signal(signum, on_signal) for signum in callback.signals}
    try:
        yield
    except BaseException as error:
        if not received:
            raise
        raise stopped(received[0], error) from None
    finally:
        deadline.cancel()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:  # the ranks had ended when it came
        raise stopped(received[0])


def any_rank_later(trainer: L.Trainer, flag: torch.Tensor) -> Callable[[], float] | None:
    """The largest ``flag`` over all processes, as a function to call later (None in one process):
    asked before the backward pass and answered after it, the all-reduce adds no point of its own
    where the ranks wait for each other (each costs about 1 % of a DDP step on 2 CPU processes)."""
    if trainer.world_size == 1 or not (dist.is_available() and dist.is_initialized()):
        return None
    flag = flag.reshape(1).to(trainer.strategy.root_device, torch.float32)
    work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True)

    def result() -> float:
        work.wait()
        return flag.item()

    return result


class StopOnNonFiniteLoss(Callback):
    """Stop before a NaN or infinite loss reaches the weights. The loss is looked at before the
    backward pass and judged before the optimizer step (or at the end of an accumulating batch):
    the ranks agree without waiting for each other an extra time, nor for the GPU's queue."""

    def __init__(self) -> None:
        self.batch_idx = 0
        self._pending: list[Callable[[], float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.batch_idx, self._pending = batch_idx, []

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        loss = loss.detach()
        bad = torch.isnan(loss).any() * 2.0 + torch.isinf(loss).any()  # 2: NaN, 1: infinite
        self._pending.append(any_rank_later(trainer, bad) or bad.item)

    def _judge(self, trainer: L.Trainer, *_, **__) -> None:
        pending, self._pending = self._pending, []
        worst = max((answer() for answer in pending), default=0.0)
        if not worst:
            return
        what = "NaN" if worst >= 2 else "infinite"
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

    on_before_optimizer_step = on_train_batch_end = _judge


class RandomStateCheckpoint(Callback):
    """The global random states in every checkpoint, restored on resume (dropout needs them)."""

    def state_dict(self) -> dict[str, Any]:
        return random_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_random_states(state_dict)

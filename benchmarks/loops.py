"""What the benchmarks time: a clock of wall and CPU time, the Trainer's steps (a callback),
and the hand-written training loop lightseg is compared against."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from lightseg.experiment import build
from lightseg.utils.console import console

AMP_DTYPES = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Clock:
    """Wall time and this process's CPU time (all its threads) between ``start`` and ``stop``.

    On a shared machine other processes stretch wall time but hardly the CPU time a step
    needs, so the CPU-time ratio shows the Trainer's own cost even when wall times are noisy.
    """

    def __init__(self, device: torch.device) -> None:
        self.device, self.started = device, (0.0, 0.0)

    def start(self) -> None:
        sync(self.device)
        self.started = (time.perf_counter(), time.process_time())

    def stop(self, images: int) -> dict[str, float]:
        """Images per second of wall time and of CPU time since ``start``."""
        sync(self.device)
        wall, cpu = time.perf_counter() - self.started[0], time.process_time() - self.started[1]
        return {"wall": images / wall, "cpu": images / cpu}


class StepTimer(Callback):
    """Times ``steps`` optimizer steps that follow ``warmup`` steps, as the plain loop does
    (``record``: a JSON file rank 0 also writes the rates to, from a spawned process)."""

    def __init__(self, warmup: int, steps: int, images: int, record: Path | None = None) -> None:
        self.warmup, self.steps, self.images, self.done = warmup, steps, images, 0
        self.rates: dict[str, float] = {}
        self.clock: Clock | None = None
        self.record = record

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.done += 1
        if self.done == self.warmup:
            self.clock = Clock(pl_module.device)
            self.clock.start()
        elif self.done == self.warmup + self.steps:
            self.rates = self.clock.stop(self.steps * self.images)
            if self.record and trainer.is_global_zero:
                self.record.write_text(json.dumps(self.rates))


def plain_loop(module, net, loader: DataLoader, cfg: DictConfig, warmup: int, steps: int):
    """``warmup`` then ``steps`` timed optimizer steps of ``net`` (default: the module's
    network; a DistributedDataParallel wrapper of it for the DDP row), as written by hand."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    module.to(device)
    net = (net or module.net).train()
    criterion = module.criterion
    # one group, as written by hand
    optimizer = instantiate(module.hparams.optimizer, params=net.parameters())
    dtype = AMP_DTYPES.get(str(cfg.trainer.precision))
    scaler = torch.amp.GradScaler(enabled=dtype is torch.float16 and device.type == "cuda")
    channels_last = module.hparams.channels_last and device.type == "cuda"
    if channels_last:
        net.to(memory_format=torch.channels_last)
    done, clock = 0, Clock(device)
    while True:
        for batch in loader:
            batch = {k: batch[k].to(device, non_blocking=True) for k in ("image", "mask")}
            batch = module.on_after_batch_transfer(batch, 0)
            images, masks = batch["image"], batch["mask"]
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(
                device.type, dtype=dtype or torch.float32, enabled=dtype is not None
            ):
                loss, _ = criterion(net(images), masks)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            done += 1
            if done == warmup:
                clock.start()
            elif done == warmup + steps:
                return clock.stop(steps * loader.batch_size)


def lightseg_run(
    cfg: DictConfig, warmup: int, steps: int, processes: int = 1, record: Path | None = None
) -> dict[str, float]:
    """Images/s of ``trainer.fit`` with the run's own module, logger and callbacks, over all
    ``processes`` (more than one: the rates come back through the ``record`` file)."""
    experiment = build(
        cfg,
        max_steps=warmup + steps,
        max_epochs=-1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    images = experiment.datamodule.device_batch_size() * processes
    timer = StepTimer(warmup, steps, images, record)
    experiment.trainer.callbacks.append(timer)
    experiment.trainer.fit(experiment.module, datamodule=experiment.datamodule)
    return json.loads(record.read_text()) if record else timer.rates


def compare(
    plain: Callable[[], dict[str, float]], lightseg: Callable[[], dict[str, float]], repeats: int
) -> dict:
    """Both runs ``repeats`` times, in alternating order; the medians of their images/s (by
    wall time and by CPU time), their ratios, and every run's rates."""
    runs: dict[str, list[dict[str, float]]] = {"plain": [], "lightseg": []}
    for repeat in range(repeats):
        order = ("plain", "lightseg") if repeat % 2 == 0 else ("lightseg", "plain")
        for name in order:
            runs[name].append((plain if name == "plain" else lightseg)())
        console.print(
            f"  repeat {repeat + 1}/{repeats}: "
            + ", ".join(f"{n} {v[-1]['wall']:.2f} img/s" for n, v in runs.items())
        )

    def median(name: str, clock: str) -> float:
        return statistics.median(r[clock] for r in runs[name])

    wall = {name: median(name, "wall") for name in runs}
    return {
        **wall,
        "plain/lightseg": wall["plain"] / wall["lightseg"],
        # this process's CPU time: what the Trainer itself costs when other work stretches wall time
        "plain/lightseg CPU time": median("plain", "cpu") / median("lightseg", "cpu"),
        "runs": runs,
    }

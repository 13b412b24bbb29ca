"""DDP training throughput: lightseg's Trainer against a plain DistributedDataParallel loop.

Both run ``PROCESSES`` CPU processes over gloo on the same network, loss, optimizer, batches
per process and data path; lightseg as ``trainer=ddp_sim`` runs it (ddp_spawn, with its stop
and non-finite-loss checks and its logger), the plain loop as a researcher would write it
(``torch.multiprocessing.spawn``, a ``DistributedSampler``, no checks). Rank 0 times the steps
after the warm-up; the rate is images/s over all processes. Runs alternate; medians compared.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from benchmarks.loops import compare, lightseg_run, plain_loop
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from lightseg.experiment import build

PROCESSES = 2


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lightseg_ddp(cfg: DictConfig, warmup: int, steps: int, record: Path) -> dict[str, float]:
    """Images/s of ``trainer.fit`` under ddp_spawn (gloo), the run's callbacks included."""
    cfg = cfg.copy()
    for key, value in {"accelerator": "cpu", "devices": PROCESSES, "strategy": "ddp_spawn"}.items():
        OmegaConf.update(cfg, f"trainer.{key}", value, force_add=True)
    return lightseg_run(cfg, warmup, steps, PROCESSES, record)


def _plain_worker(rank: int, cfg: DictConfig, warmup: int, steps: int, port: int, record: Path):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=PROCESSES)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // PROCESSES))  # as Lightning's DDP
    try:
        torch.manual_seed(cfg.seed)  # the same initial weights in every process
        experiment = build(cfg)
        experiment.datamodule.setup("fit")
        dataset = experiment.datamodule.dataset("train")
        loader = DataLoader(
            dataset,
            batch_size=experiment.datamodule.batch_size,
            sampler=DistributedSampler(dataset, PROCESSES, rank, seed=cfg.seed),
            num_workers=experiment.datamodule.num_workers,
            drop_last=True,
        )
        net = DistributedDataParallel(experiment.module.net)
        rates = plain_loop(experiment.module, net, loader, cfg, warmup, steps)
        if rank == 0:
            record.write_text(json.dumps({k: v * PROCESSES for k, v in rates.items()}))
    finally:
        dist.destroy_process_group()


def plain_ddp(cfg: DictConfig, warmup: int, steps: int, record: Path) -> dict[str, float]:
    """Images/s of the hand-written DDP loop."""
    mp.spawn(_plain_worker, (cfg, warmup, steps, free_port(), record), nprocs=PROCESSES)
    return json.loads(record.read_text())


def ddp_rows(cfg: DictConfig, warmup: int, steps: int, repeats: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        record = Path(folder) / "rates.json"
        compared = compare(
            lambda: plain_ddp(cfg, warmup, steps, record),
            lambda: lightseg_ddp(cfg, warmup, steps, record),
            repeats,
        )
    row = {"processes": f"{PROCESSES} x CPU (gloo)", "batch/process": cfg.data.batch_size}
    return [{**row, **compared}]

"""Hardware switches checked in one place: clear errors, or a fallback with a warning."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import torch
from lightning.fabric.plugins.environments import TorchElasticEnvironment
from torch import nn

from lightseg.errors import LightsegError
from lightseg.utils.ranks import is_first_process

log = logging.getLogger(__name__)

#: DDP strategies that start their processes from this one (the others re-run the command).
LAUNCHED_INSIDE = ("spawn", "fork", "notebook")
CPU_PRECISIONS = ("32", "32-true", "64", "64-true", "bf16", "bf16-mixed", "bf16-true")


def wants_gpu(trainer: dict[str, Any]) -> bool:
    return trainer.get("accelerator") in ("gpu", "cuda") or trainer.get("strategy") == "fsdp"


def check_trainer(trainer: dict[str, Any]) -> dict[str, Any]:
    """Validate device settings before Lightning sees them; return the (adjusted) arguments."""
    trainer = dict(trainer)
    gpus = torch.cuda.device_count()
    if wants_gpu(trainer) and gpus == 0:
        raise LightsegError(
            f"The trainer asks for GPUs (accelerator={trainer.get('accelerator')}, "
            f"strategy={trainer.get('strategy')}) but this machine has none visible "
            "(torch.cuda.is_available() is False). Use trainer=cpu, or trainer=ddp_sim to run "
            "the DDP code paths on 2 CPU processes."
        )
    on_cpu = trainer.get("accelerator") == "cpu" or (gpus == 0 and not wants_gpu(trainer))
    strategy = str(trainer.get("strategy") or "")
    relaunches = strategy.startswith("ddp") and not any(k in strategy for k in LAUNCHED_INSIDE)
    if on_cpu and relaunches and not TorchElasticEnvironment.detect():
        raise LightsegError(
            f"trainer.strategy={strategy} on the CPU starts each process by running this command "
            "again, which lightseg does not support there. Use trainer.strategy=ddp_spawn "
            "(trainer=ddp_sim: 2 CPU processes over gloo), or start the processes with torchrun "
            "into one folder: torchrun --nproc-per-node=2 -m lightseg.train trainer=ddp_sim "
            "trainer.strategy=ddp hydra.run.dir=<folder> ..."
        )
    restarts = os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0")
    if restarts != "0" and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        raise LightsegError(
            f"torchrun --max-restarts={restarts} with workers that share torchrun's own "
            "rendezvous store: after a restart they read the stopped workers' addresses from it "
            "and fail to connect (pytorch/pytorch#135712), so the job would end at its first "
            "restart. Give each restart a store of its own: TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 "
            "torchrun --rdzv-backend=c10d --rdzv-endpoint=<node 0's address>:29400 ... (on one "
            "machine: TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --standalone ...)."
        )
    forwarded = os.environ.get("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGUSR1").split(",")  # torchrun's
    if os.environ.get("SLURM_JOB_ID") and "SIGUSR1" not in forwarded and is_first_process():
        log.warning(
            "torchrun does not pass SIGUSR1 (SLURM's warning before the time limit) on to its "
            "workers, and dies of it: start it with --signals-to-handle=SIGTERM,SIGINT,SIGHUP,"
            "SIGQUIT,SIGUSR1 so that the run saves last.ckpt and stops."
        )
    devices = trainer.get("devices")
    if gpus and not on_cpu and isinstance(devices, int) and devices > gpus:
        raise LightsegError(
            f"trainer.devices={devices} but only {gpus} GPU(s) are visible. Use "
            f"trainer.devices={gpus} (or -1 for all), or check CUDA_VISIBLE_DEVICES."
        )
    precision = str(trainer.get("precision", "32-true"))
    if on_cpu and precision not in CPU_PRECISIONS:
        log.warning("trainer.precision=%s needs a GPU; using 32-true on the CPU.", precision)
        trainer["precision"] = "32-true"
    if on_cpu and trainer.get("sync_batchnorm"):
        log.warning("trainer.sync_batchnorm=true needs GPUs; plain BatchNorm on the CPU.")
        trainer["sync_batchnorm"] = False
    return trainer


def compile_in_place(net: nn.Module) -> None:
    """torch.compile the network's forward, keeping parameter names (checkpoints stay portable);
    where compilation fails, torch falls back to eager execution with a warning."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    try:
        net.compile()
    except RuntimeError as error:  # e.g. Dynamo unsupported on this Python version
        warnings.warn(f"compile=true ignored: {error}", stacklevel=2)


def inference_device(name: str) -> torch.device:
    """The ``device`` of eval/predict: ``auto`` is CUDA where available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LightsegError(f"device={name}, but this machine has no CUDA GPU; use device=cpu.")
    return torch.device(name)

"""Device switches and batch-size semantics: clear errors, warned fallbacks."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from lightseg.data import SegmentationDataModule
from lightseg.data.demo import Demo
from lightseg.errors import LightsegError
from lightseg.utils.devices import check_trainer, compile_in_place
from lightseg.utils.ranks import RANKS, is_first_process


def test_gpu_strategies_without_a_gpu_are_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for trainer in ({"accelerator": "gpu"}, {"accelerator": "auto", "strategy": "ddp"}):
        with pytest.raises(LightsegError, match="trainer=ddp_sim"):
            check_trainer(trainer)


def test_ddp_on_the_cpu_outside_torchrun_says_how_to_run_it(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    ddp_sim = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}  # trainer=ddp_sim + ddp
    with pytest.raises(LightsegError) as refused:
        check_trainer(ddp_sim)
    message = str(refused.value)
    assert "asks for GPUs" not in message and "running this command again" in message
    assert "trainer.strategy=ddp_spawn" in message and "torchrun --nproc-per-node=2" in message
    assert check_trainer({**ddp_sim, "strategy": "ddp_spawn"})["strategy"] == "ddp_spawn"
    torchrun = {"TORCHELASTIC_RUN_ID": "none", "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}
    for name, value in torchrun.items():  # what torchrun gives each process
        monkeypatch.setenv(name, value)
    assert check_trainer(ddp_sim)["strategy"] == "ddp"


def test_torchrun_restarts_that_would_read_a_stale_store_are_refused_before_training(
    monkeypatch, caplog
):
    """torchrun --max-restarts with the store shared with the agent: restarted workers read the
    stopped workers' addresses (pytorch#135712; seen here with torch 2.14 over gloo, static and
    c10d rendezvous). tests/test_ddp_runs.py restarts a real job the way the message says."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    ddp = {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}
    torchrun = {"TORCHELASTIC_RUN_ID": "job", "RANK": "0", "WORLD_SIZE": "2"}
    for name, value in {**torchrun, "TORCHELASTIC_MAX_RESTARTS": "3"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    with pytest.raises(LightsegError) as refused:
        check_trainer(ddp)
    message = str(refused.value)
    assert message.startswith("torchrun --max-restarts=3 with workers that share")
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun --rdzv-backend=c10d" in message
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "False")  # what that variable gives
    assert check_trainer(ddp)["strategy"] == "ddp"
    monkeypatch.setenv("TORCHELASTIC_USE_AGENT_STORE", "True")
    monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", "0")  # nothing restarts: nothing to refuse
    assert check_trainer(ddp)["strategy"] == "ddp"

    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT")
    check_trainer(ddp)
    assert caplog.text.count("--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1") == 1
    caplog.clear()
    monkeypatch.setenv("TORCHELASTIC_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
    check_trainer(ddp)
    assert "signals-to-handle" not in caplog.text


def test_more_devices_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(LightsegError, match=r"trainer\.devices=4 but only 2 GPU"):
        check_trainer({"accelerator": "gpu", "devices": 4, "strategy": "ddp"})
    assert check_trainer({"accelerator": "gpu", "devices": 2})["devices"] == 2


def test_gpu_only_switches_fall_back_on_the_cpu_with_a_warning(monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    caplog.set_level(logging.WARNING)
    cpu = {"accelerator": "cpu", "precision": "16-mixed", "sync_batchnorm": True, "devices": 2}
    assert check_trainer(cpu) == {**cpu, "precision": "32-true", "sync_batchnorm": False}
    assert "needs a GPU" in caplog.text and "needs GPUs" in caplog.text
    assert check_trainer({"accelerator": "cpu", "precision": "bf16-mixed"})["precision"] == (
        "bf16-mixed"
    )


def datamodule(tmp_path, **kwargs) -> SegmentationDataModule:
    return SegmentationDataModule(
        Demo(tmp_path / "demo", num_cases=10), {"train": [], "eval": []}, (64, 64), **kwargs
    )


@pytest.mark.parametrize(("world", "per_device"), [(1, 8), (2, 4), (4, 2)])
def test_global_batch_size_is_divided_over_processes(tmp_path, world, per_device):
    dm = datamodule(tmp_path, global_batch_size=8)
    dm.trainer = SimpleNamespace(world_size=world)
    assert dm.device_batch_size() == per_device


@pytest.mark.parametrize("global_batch_size", [3, 6])
def test_global_batch_size_that_does_not_divide_is_refused(tmp_path, global_batch_size):
    dm = datamodule(tmp_path, global_batch_size=global_batch_size)
    dm.trainer = SimpleNamespace(world_size=4)
    with pytest.raises(LightsegError, match="cannot be split evenly over 4 processes"):
        dm.device_batch_size()
    assert datamodule(tmp_path, batch_size=3).device_batch_size() == 3  # per device by default


def test_only_rank_zero_writes_split_files(tmp_path):
    dm = datamodule(tmp_path, split_dir=tmp_path / "run")
    dm.prepare_data()
    dm.trainer = SimpleNamespace(is_global_zero=False, world_size=2)
    dm.setup("fit")
    assert dm.splits["train"] and not (tmp_path / "run").exists()


def test_compile_keeps_parameter_names_so_checkpoints_stay_portable():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    keys = list(net.state_dict())
    compile_in_place(net)
    assert list(net.state_dict()) == keys
    assert net(torch.randn(1, 3, 8, 8)).shape == (1, 4, 6, 6)


@pytest.mark.parametrize(
    ("launched", "first"),
    [
        ({}, True),
        ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}, True),  # torchrun
        ({"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2"}, False),
        ({"SLURM_PROCID": "3"}, False),  # srun
        ({"LOCAL_RANK": "1", "NODE_RANK": "0"}, False),  # trainer=ddp's own second process
        ({"LOCAL_RANK": "0", "NODE_RANK": "1"}, False),  # ... the first one on node 1
    ],
)
def test_only_the_first_process_of_a_job_owns_the_run_folder(monkeypatch, launched, first):
    """The owner takes run.lock: any other process of the job taking it would be refused as a
    second run in a live run's folder."""
    for name in RANKS:
        monkeypatch.delenv(name, raising=False)
    for name, value in launched.items():
        monkeypatch.setenv(name, value)
    assert is_first_process() is first

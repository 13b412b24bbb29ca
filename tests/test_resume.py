"""Runs you can trust: same seed -> same numbers; killed and resumed -> same numbers; NaN stops."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from lightseg.errors import LightsegError, TrainingInterrupted
from lightseg.tools.plot import read_csv_log
from lightseg.train import train
from tests.conftest import make_config

#: 20 demo cases -> 12 train (3 batches of 4), 4 val, 4 test; 2 epochs of 3 steps.
SHORT_RUN = (
    "experiment=demo",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=2",
    "trainer.deterministic=true",
    "trainer.log_every_n_steps=1",
    "logger=csv",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "data.num_workers=0",
    "data.batch_size=4",
    "data.image_size=[64,64]",
    "data.source.num_cases=20",
    "seed=7",
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def restore_determinism():
    """trainer.deterministic=true switches torch to deterministic kernels for the process."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def short_run(folder: Path, data_dir: Path, *overrides: str):
    return make_config(folder, *SHORT_RUN, *overrides, data_dir=data_dir)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def val_curve(run: Path) -> list[float]:
    validated = read_csv_log(run).dropna(subset=["val/dice"])  # a resumed run's parts, joined
    assert validated["epoch"].is_unique  # each epoch's validation once, also after a resume
    return validated["val/dice"].tolist()


@pytest.fixture(scope="module")
def reference(one_thread, tmp_path_factory, data_dir):
    """One uninterrupted short run: (run folder, metrics)."""
    folder = tmp_path_factory.mktemp("reference")
    return folder / "run", train(short_run(folder, data_dir))


def test_same_seed_gives_identical_metrics(reference, tmp_path, data_dir):
    run, metrics = reference
    again = train(short_run(tmp_path, data_dir))
    assert again == metrics  # exact float equality, every metric
    assert val_curve(tmp_path / "run") == val_curve(run)
    final, final_again = (
        weights(run / "checkpoints/last.ckpt"),
        weights(tmp_path / "run/checkpoints/last.ckpt"),
    )
    assert all(torch.equal(final[k], final_again[k]) for k in final)


@pytest.mark.parametrize(
    ("epoch", "batch_idx", "saved_at"),
    [
        (1, 1, (1, 5)),  # mid-epoch: saved after 2 of epoch 1's 3 batches
        (0, 2, (0, 3)),  # last batch: epoch 0 validates and ends first, then saves
    ],
)
def test_sigterm_then_resume_matches_uninterrupted_run(
    reference, tmp_path, data_dir, epoch, batch_idx, saved_at
):
    reference_run, reference_metrics = reference
    run = tmp_path / "run"
    kill = (
        "+callbacks.kill._target_=tests.runs.SignalAt",
        f"+callbacks.kill.epoch={epoch}",
        f"+callbacks.kill.batch_idx={batch_idx}",
    )
    message = f"SIGTERM in epoch {saved_at[0]} at global step {saved_at[1]}"
    with pytest.raises(TrainingInterrupted, match=message) as stop:
        train(short_run(tmp_path, data_dir, *kill))
    assert stop.value.exit_code == 128 + signal.SIGTERM
    saved = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert (saved["epoch"], saved["global_step"]) == saved_at
    assert not (run / "metrics.json").exists()
    assert json.loads((run / "run_info.json").read_text())["status"] == "interrupted"

    resumed = train(short_run(tmp_path, data_dir, f"ckpt_path={run / 'checkpoints/last.ckpt'}"))

    assert resumed == reference_metrics
    final, expected = (
        weights(run / "checkpoints/last.ckpt"),
        weights(reference_run / "checkpoints/last.ckpt"),
    )
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert val_curve(run) == val_curve(reference_run)  # metrics.csv kept the first part
    info = json.loads((run / "run_info.json").read_text())
    assert info["status"] == "finished" and len(info["resumes"]) == 1
    leftovers = [p.name for p in run.rglob("*") if "partial" in p.name]
    assert leftovers == []
    for checkpoint in run.rglob("*.ckpt"):
        torch.load(checkpoint, weights_only=True)  # complete files only


def test_nan_loss_stops_naming_the_step_and_keeps_last_good_checkpoint(tmp_path, data_dir):
    poison = (
        "+callbacks.poison._target_=tests.runs.PoisonAt",
        "+callbacks.poison.epoch=1",
        "+callbacks.poison.batch_idx=1",
    )
    with pytest.raises(
        LightsegError, match=r"loss became NaN at global step 4 \(epoch 1, batch 1\)"
    ):
        train(short_run(tmp_path, data_dir, *poison))
    run = tmp_path / "run"
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 3  # end of epoch 0: nothing saved after the NaN
    assert all(
        torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point()
    )
    assert json.loads((run / "run_info.json").read_text())["status"] == "failed"


def test_missing_checkpoint_is_a_clear_error(tmp_path, data_dir):
    cfg = short_run(tmp_path, data_dir, f"ckpt_path={tmp_path / 'nope.ckpt'}")
    with pytest.raises(LightsegError, match=r"nope\.ckpt' does not exist"):
        train(cfg)

"""User mistakes end in one clear paragraph and a non-zero exit, never a traceback."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys

import pytest
from hydra.errors import InstantiationException
from torch.utils.data import DataLoader, Dataset

from lightseg.errors import LightsegError, user_errors, user_message


def run_train(*overrides: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lightseg.train", "print_config=false", *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_unknown_experiment_lists_the_valid_ones(tmp_path):
    result = run_train("experiment=ph2_unte", cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'experiment/ph2_unte'" in result.stderr
    assert "ph2_unet" in result.stderr and "Traceback" not in result.stderr


def test_missing_dataset_from_the_command_line(tmp_path):
    result = run_train(
        "experiment=ph2_unet",
        f"paths.data_dir={tmp_path}/data",
        f"hydra.run.dir={tmp_path}/run",
        "model.encoder_weights=null",
        "logger=none",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "PH2 not found" in result.stderr and "make train" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


class Broken(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index):
        raise LightsegError("Cannot read image file 'x.bmp' (truncated).")


def test_error_raised_in_a_dataloader_worker_is_shown_without_its_traceback():
    with pytest.raises(LightsegError) as error:
        next(iter(DataLoader(Broken(), num_workers=1)))
    assert "Original Traceback" in str(error.value)  # what torch does to worker errors
    assert user_message(error.value) == "Cannot read image file 'x.bmp' (truncated)."


def test_errors_from_constructors_called_by_hydra_are_unwrapped(capsys):
    try:
        raise LightsegError("data.image_size must be multiples of 32")
    except LightsegError as cause:
        wrapped = InstantiationException("Error in call to target 'X'")
        wrapped.__cause__ = cause
    with pytest.raises(SystemExit) as exit_info, user_errors():
        raise wrapped
    assert exit_info.value.code == 1
    assert "data.image_size must be multiples of 32" in capsys.readouterr().err


def test_a_full_disk_at_any_write_is_one_paragraph_naming_the_folder(tmp_path):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "metrics.json"))
    message = user_message(full)
    assert message.startswith("The disk is full ([Errno 28]") and f"in '{tmp_path}'" in message
    quota = OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
    assert "Free space" in user_message(quota)
    try:  # what torch.save raises when its file's write fails
        try:
            raise full
        except OSError:
            raise RuntimeError("inline_container.cc:672 unexpected pos 7 vs 5")  # noqa: B904
    except RuntimeError as wrapped:
        assert user_message(wrapped).startswith("The disk is full")
    assert user_message(OSError(errno.EACCES, "Permission denied")) is None  # not this one


def test_bugs_are_not_disguised_as_user_errors():
    with pytest.raises(ZeroDivisionError), user_errors():
        _ = 1 / 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "data.batch_size=0 must be a whole number >= 1"),
        ("trainer.max_epochs=-3", "`max_epochs` must be a non-negative integer"),
        ("model.arch=FPN", r"data.image_size=\[100, 130\] does not fit the network"),
    ],
)
def test_a_mistake_on_the_command_line_is_one_paragraph_and_leaves_no_run_folder(
    tmp_path, override, message
):
    result = run_train(
        "experiment=demo",
        "data.image_size=[100,130]" if override == "model.arch=FPN" else "debug=fdr",
        override,
        f"paths.log_dir={tmp_path / 'logs'}",
        f"paths.data_dir={tmp_path / 'data'}",
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert re.search(message, result.stderr), result.stderr
    assert not any((tmp_path / "logs" / "demo" / "runs").iterdir())  # nothing left behind

"""W&B goes online only with credentials and never prompts; offline otherwise."""

from __future__ import annotations

import logging

import pytest

from lightseg.utils.loggers import wandb_logger


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    for name in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_offline_without_credentials(no_credentials, caplog):
    caplog.set_level(logging.INFO)
    logger = wandb_logger(save_dir=str(no_credentials / "run"), project="p")
    assert logger._wandb_init["mode"] == "offline"
    assert "no credentials found, logging offline" in caplog.text


def test_online_with_an_api_key_or_a_netrc_entry(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_logger(save_dir=str(no_credentials))._wandb_init["mode"] == "online"
    monkeypatch.delenv("WANDB_API_KEY")
    (no_credentials / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    assert wandb_logger(save_dir=str(no_credentials))._wandb_init["mode"] == "online"


def test_wandb_mode_from_the_environment_wins(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_logger(save_dir=str(no_credentials))._wandb_init["mode"] == "disabled"

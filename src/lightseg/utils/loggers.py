"""Experiment loggers: W&B that never prompts or hangs, falling back to offline mode."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    """True when an API key is in the environment or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_logger(mode: str = "auto", save_dir: str = ".", **kwargs) -> WandbLogger:
    """A WandbLogger; ``mode=auto`` means online with credentials, otherwise offline."""
    mode = os.environ.get("WANDB_MODE", mode)
    if mode == "auto":
        mode = "online" if wandb_credentials_present() else "offline"
        if mode == "offline":
            log.info(
                "W&B: no credentials found, logging offline to %s (upload later with "
                "`wandb sync <run>/wandb/offline-run-*`, or `wandb login` before training).",
                save_dir,
            )
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    return WandbLogger(save_dir=save_dir, mode=mode, **kwargs)

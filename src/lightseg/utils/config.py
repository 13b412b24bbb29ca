"""Config nodes as plain Python values."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def plain(node: Any) -> Any:
    """A resolved config node as plain Python containers (what checkpoints and JSON store)."""
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node

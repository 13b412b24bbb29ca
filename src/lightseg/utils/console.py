"""Rich console output: the config tree at start, the metrics table at the end."""

from __future__ import annotations

from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.tree import Tree

console = Console()

#: Top-level groups shown first in the config tree.
CONFIG_ORDER = ("data", "model", "loss", "optimizer", "scheduler", "trainer", "callbacks", "logger")


def print_config_tree(cfg: DictConfig) -> None:
    tree = Tree("config", guide_style="dim")
    keys = [k for k in CONFIG_ORDER if k in cfg] + [k for k in cfg if k not in CONFIG_ORDER]
    for key in keys:
        value = cfg[key]
        text = (
            OmegaConf.to_yaml(value, resolve=True) if isinstance(value, DictConfig) else str(value)
        )
        tree.add(f"[bold]{key}[/]").add(Syntax(text.rstrip(), "yaml", background_color="default"))
    console.print(tree)


def print_metrics(metrics: Mapping[str, float], title: str = "Final metrics") -> None:
    """Metrics as a table with one row per name, and val/test side by side (empty: no value,
    e.g. a class in neither the truth nor the predictions)."""
    names = sorted({key.split("/", 1)[1] for key in metrics if "/" in key})
    stages = [s for s in ("val", "test") if any(k.startswith(f"{s}/") for k in metrics)]
    table = Table(title=title)
    table.add_column("metric")
    for stage in stages:
        table.add_column(stage, justify="right")
    for name in names:
        cells = [metrics.get(f"{s}/{name}") for s in stages]
        table.add_row(name, *("" if c is None or c != c else f"{c:.4f}" for c in cells))
    console.print(table)

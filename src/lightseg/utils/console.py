"""Console output: a few lines about the run at the start, the metrics table at the end, never
wrapped (a path stays one line to copy); known third-party chatter dropped message by message.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Mapping

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Column, Table
from rich.text import Text
from rich.tree import Tree

console = Console(soft_wrap=True)
if not (console.is_terminal or console.is_jupyter or os.environ.get("COLUMNS")):
    console.width = 160  # a file or pipe: wide enough for tables

#: Top-level groups shown first in the config tree.
CONFIG_ORDER = ("data", "model", "loss", "optimizer", "scheduler", "trainer", "callbacks", "logger")
#: Groups whose chosen option, and data and trainer values, the start-up summary shows.
SUMMARY_GROUPS = ("experiment", "data", "model", "loss", "optimizer", "scheduler", "trainer")
DATA_KEYS = ("image_size", "batch_size", "num_workers", "split", "cache")
TRAINER_KEYS = ("accelerator", "devices", "num_nodes", "precision", "max_epochs", "max_steps")
#: Lightning log lines (starts of messages) that say nothing about the run: an advertisement,
#: and remarks on choices lightseg makes on purpose (a Rich model summary, per-step schedules).
LIGHTNING_CHATTER = (
    "💡 Tip:",
    "Trainer already configured with model summary callbacks",
    "Loading `train_dataloader` to estimate number of stepping batches",
)
#: Loggers Lightning sends those lines through (rank_zero_info).
LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


def _not_chatter(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(LIGHTNING_CHATTER)


def quiet_third_party() -> None:
    """Filter the chatter of libraries lightseg drives, each message by name, at its source."""
    for name in LIGHTNING_LOGGERS:
        logging.getLogger(name).addFilter(_not_chatter)  # added once: a filter is kept once
    # Lightning's own use of a deprecated torch class
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # SegmentationModule normalises batches in a batch-transfer hook by design; Lightning warns
    # whenever a DataModule is given too, even one without the hook
    warnings.filterwarnings(
        "ignore",
        message="You have overridden `on_after_batch_transfer` in `LightningModule` but have",
        module=r"lightning\.pytorch\.trainer\.connectors\.data_connector",
    )


def print_config(cfg: DictConfig, choices: Mapping[str, str] | None = None) -> None:
    """``print_config``: true = the summary, ``full`` = the whole tree, false = nothing (the
    run folder's ``config.yaml`` has it all either way)."""
    mode = cfg.get("print_config")
    if str(mode).lower() == "full":
        tree = Tree("config", guide_style="dim")
        keys = [k for k in CONFIG_ORDER if k in cfg] + [k for k in cfg if k not in CONFIG_ORDER]
        for key in keys:
            node = cfg[key]
            text = OmegaConf.to_yaml(node, resolve=True) if OmegaConf.is_dict(node) else str(node)
            syntax = Syntax(text.rstrip(), "yaml", background_color="default")
            tree.add(f"[bold]{key}[/]").add(syntax)
        console.print(tree)
    elif mode:
        for label, value in config_summary(cfg, choices or {}):
            console.print(Text.assemble((f"{label:<9}", "bold"), " ", value))


def config_summary(cfg: DictConfig, choices: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(label, text)`` lines: the options chosen and the values that decide a run."""
    picked = " ".join(f"{g}={choices[g]}" for g in SUMMARY_GROUPS if choices.get(g))
    data = cfg.get("data") or {}
    source = _short(str((data.get("source") or {}).get("_target_", "")))
    lines = [(str(cfg.get("name", "")), picked or "(config as composed)")]
    lines.append(("data", f"{source} {_values(data, DATA_KEYS)}".strip()))
    for group in ("model", "optimizer", "scheduler"):
        node = cfg.get(group) or {}
        keys = [k for k in node if k != "_target_" and not isinstance(node[k], DictConfig)]
        target = _short(str(node.get("_target_", "")))
        lines.append((group, f"{target} {_values(node, keys)}".strip() if node else "none"))
    loss = cfg.get("loss") or {}
    terms = [f"{name} x{term.get('weight', 1.0)}" for name, term in loss.items() if term]
    lines.append(("loss", " + ".join(terms) or "none"))
    trainer = _values(cfg.get("trainer") or {}, TRAINER_KEYS)
    lines.append(("trainer", f"{trainer} monitor={cfg.get('monitor')} seed={cfg.get('seed')}"))
    output = (cfg.get("paths") or {}).get("output_dir")
    lines.append(("run", f"{output} (config.yaml there; print_config=full prints it all)"))
    return lines


def _short(target: str) -> str:
    """A class by its name (``AdamW``), a function with its module (``smp_models.build``)."""
    parts = target.split(".")
    return ".".join(parts[-2:]) if parts[-1][:1].islower() else parts[-1]


def _values(node: DictConfig, keys: Iterable[str]) -> str:
    """``key=value`` for the keys that are set; mappings as ``key=a:1,b:2``, lists ``[1,2]``."""
    shown = []
    for key in keys:
        value = node.get(key)
        if OmegaConf.is_config(value):
            value = OmegaConf.to_container(value, resolve=True)
        if isinstance(value, Mapping):
            value = ",".join(f"{k}:{v}" for k, v in value.items())
        elif isinstance(value, list):
            value = "[" + ",".join(map(str, value)) + "]"
        if value is not None:
            shown.append(f"{key}={value}")
    return " ".join(shown)


def print_metrics(metrics: Mapping[str, float], title: str = "Final metrics") -> None:
    """Metrics as a table, one row per name, val/test side by side (empty: no value)."""
    stages = [s for s in ("val", "test") if any(k.startswith(f"{s}/") for k in metrics)]
    names = sorted({key.split("/", 1)[1] for key in metrics if key.split("/", 1)[0] in stages})
    table = Table("metric", *(Column(stage, justify="right") for stage in stages))
    for name in names:
        cells = [metrics.get(f"{s}/{name}") for s in stages]
        table.add_row(name, *("" if c is None or c != c else f"{c:.4f}" for c in cells))
    console.print(Text(title, style="italic"))  # above the table: a title in it would wrap
    console.print(table)

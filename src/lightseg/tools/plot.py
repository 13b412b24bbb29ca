"""Training curves from CSV logs into ``curves.png``: ``make plot RUN=<run folder>`` (losses,
validation metrics and learning rate over epochs) or ``make plot RUNS=<folder>`` (a panel per
validation metric, a curve per configuration as ``make table`` groups them: the mean over its
runs in a band of ± one sample standard deviation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from lightseg.config import app
from lightseg.errors import LightsegError
from lightseg.runs import RunFolder
from lightseg.tools.results import Row, check_types, collect, names
from lightseg.utils.console import console

#: The validation curves compared by default, those of them the runs logged.
DEFAULT_CURVES = ("val/loss", "val/dice", "val/iou")


def csv_logs(run: str | Path) -> list[Path]:
    """The parts of a run's CSV log in the order they were written: ``csv/version_<n>/
    metrics.csv`` by ``n`` (one per start or resume), after ``csv/metrics.csv`` (older runs)."""
    single = RunFolder(run).csv_log
    numbered = {
        int(path.parent.name.removeprefix("version_")): path
        for path in single.parent.glob("version_*/metrics.csv")
        if path.parent.name.removeprefix("version_").isdigit()
    }
    return ([single] if single.is_file() else []) + [numbered[n] for n in sorted(numbered)]


def read_csv_log(run: str | Path) -> pd.DataFrame:
    """A run's CSV log as one table in which everything logged counts once: a resume replays
    the run, so each part that trained replaces what earlier parts logged from its first step
    on; a part without ``train/`` values (an evaluation in a ``ddp_spawn`` process) is left out."""
    parts: list[pd.DataFrame] = []
    for path in csv_logs(run):
        try:
            part = pd.read_csv(path)
        except pd.errors.EmptyDataError:
            continue
        if "step" not in part or not any(str(c).startswith("train/") for c in part):
            continue
        parts = [earlier[earlier["step"] < part["step"].min()] for earlier in parts]
        parts.append(part)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def epoch_table(run: str | Path) -> pd.DataFrame:
    """One row per epoch of a run's CSV log, each column its last logged value in that epoch
    (Lightning writes epoch-level values on rows of their own)."""
    frame = read_csv_log(run)
    if "epoch" not in frame:
        raise LightsegError(
            f"The CSV log of '{run}' has no epoch column; is it a Lightning CSV log?"
        )
    # LearningRateMonitor's rows carry no epoch: they belong to the epoch that follows them.
    frame["epoch"] = frame["epoch"].bfill().ffill()
    frame = frame.dropna(subset=["epoch"]).astype({"epoch": int})
    table = frame.drop(columns="step").groupby("epoch").last().dropna(axis=1, how="all")
    trained = [c for c in table if c.startswith("train/")]
    if trained:  # drop the evaluation of the best checkpoint that follows training
        table = table[table[trained].notna().any(axis=1)]
    return table


def panels(count: int):
    """A figure of ``count`` panels side by side, not pyplot's (no backend is chosen or held)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5 * count, 3.8), layout="tight")
    return figure, figure.subplots(1, count, squeeze=False)[0]


def save(figure, axes, titles: list[str], title: str, out: Path) -> Path:
    """Label each panel's epoch axis, and write the figure."""
    from matplotlib.ticker import MaxNLocator

    for axis, panel in zip(axes, titles, strict=True):
        axis.set(title=panel, xlabel="epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(title, fontsize=8)
    figure.savefig(out, dpi=120)
    return out


def plot_curves(run: Path, out: Path | None = None) -> Path:
    """Draw the run's curves into ``out`` (default ``<run>/curves.png``)."""
    folder = RunFolder(run).csv_log.parent
    if not csv_logs(run):
        raise LightsegError(
            f"No training log in '{folder}'. run= must be a run folder "
            "(logs/<name>/runs/<time>/) trained with the CSV logger (logger=default or logger=csv)."
        )
    table = epoch_table(run)
    if table.empty:
        raise LightsegError(f"The CSV log in '{folder}' holds no epoch-level values yet.")
    drawn = {
        "loss": [c for c in table if c in ("train/loss_epoch", "train/loss", "val/loss")],
        "validation": [c for c in table if c.startswith("val/") and "loss" not in c],
        "learning rate": [c for c in table if c.startswith("lr-")],
    }
    drawn = {title: columns for title, columns in drawn.items() if columns}
    figure, axes = panels(len(drawn))
    for axis, columns in zip(axes, drawn.values(), strict=True):
        for column in columns:
            series = table[column].dropna()
            axis.plot(series.index, series.values, marker="o", markersize=3, label=column)
    return save(figure, axes, list(drawn), str(run), Path(out or Path(run) / "curves.png"))


def run_tables(row: Row) -> list[pd.DataFrame]:
    """The epoch tables of a configuration's runs that have a CSV log."""
    return [epoch_table(run.folder) for run in row.runs if csv_logs(run.folder)]


def band(tables: list[pd.DataFrame], metric: str) -> pd.DataFrame:
    """Per epoch: ``mean`` and sample ``std`` (n - 1) of ``metric`` over the runs that logged
    that epoch, and their number ``runs`` (no std from one run)."""
    series = [t[metric].rename(i) for i, t in enumerate(tables) if metric in t]
    if not series:
        return pd.DataFrame(columns=["mean", "std", "runs"])
    values = pd.concat(series, axis=1)
    return pd.DataFrame(
        {"mean": values.mean(axis=1), "std": values.std(axis=1), "runs": values.count(axis=1)}
    ).dropna(subset=["mean"])


def plot_configurations(
    root: Path,
    metrics: Sequence[str] | None = None,
    out: Path | None = None,
    aliases: dict[str, str] | None = None,
    include_debug: bool = False,
) -> Path:
    """Overlay the configurations' mean ± std validation curves into ``<root>/curves.png``."""
    rows, _, _ = collect(Path(root), aliases=aliases, include_debug=include_debug)
    tables = {row.label: run_tables(row) for row in rows}
    logged = sorted({c for ts in tables.values() for t in ts for c in t if c.startswith("val/")})
    if not logged:
        raise LightsegError(
            f"No run under '{root}' has validation values in a CSV log (csv/): "
            "train with logger=default or logger=csv."
        )
    chosen = list(metrics) if metrics else [m for m in DEFAULT_CURVES if m in logged]
    unknown = [m for m in chosen if m not in logged]
    if unknown or not chosen:
        raise LightsegError(
            f"Curve(s) {unknown or list(DEFAULT_CURVES)} are in no CSV log under '{root}'. "
            f"Logged: {', '.join(logged)}."
        )
    figure, axes = panels(len(chosen))
    for axis, metric in zip(axes, chosen, strict=True):
        for label, runs in tables.items():
            curve = band(runs, metric)
            if curve.empty:
                continue
            line = axis.plot(curve.index, curve["mean"], marker="o", markersize=3)[0]
            line.set_label(f"{label} (n={int(curve['runs'].max())})")
            low, high = curve["mean"] - curve["std"], curve["mean"] + curve["std"]
            axis.fill_between(curve.index, low, high, color=line.get_color(), alpha=0.2)
    out = Path(out or Path(root) / "curves.png")
    return save(figure, axes, chosen, f"{root}: mean ± std over runs", out)


@app("plot")
def main(cfg: DictConfig) -> None:
    check_types(cfg, include_debug=bool)
    if (cfg.run is None) == (cfg.runs is None):
        raise LightsegError(
            "Give run=<run folder> (its curves) or runs=<folder of runs> (configurations "
            "compared), one of them."
        )
    if cfg.run is not None:
        out = plot_curves(cfg.run, cfg.out)
    else:
        aliases = dict(cfg.labels or {})
        out = plot_configurations(cfg.runs, names(cfg.curves), cfg.out, aliases, cfg.include_debug)
    console.print(f"Wrote {out}")


if __name__ == "__main__":
    main()

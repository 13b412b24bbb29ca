"""Training curves from CSV logs: of one run, or of the configurations in a folder of runs.

    python -m lightseg.tools.plot RUN [--out curves.png]          make plot RUN=<run folder>
    python -m lightseg.tools.plot --runs FOLDER [--metrics val/loss,val/dice] [--label k=alias]
                                                                  make plot RUNS=<folder>

One run: three panels over epochs: losses (train and val), validation metrics (IoU, Dice, per
class), and the learning rate; writes ``<RUN>/curves.png``. A folder: one panel per validation
metric, one curve per configuration (grouped as ``make table`` groups them: seeds and data
splits are replicates) with its mean over the runs and a band of ± one sample standard
deviation; writes ``<FOLDER>/curves.png``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from lightseg.errors import LightsegError, user_errors
from lightseg.runs import RunFolder
from lightseg.tools.results import Row, collect, parse_aliases
from lightseg.utils.console import console

#: The validation curves compared by default, those of them the runs logged.
DEFAULT_CURVES = ("val/loss", "val/dice", "val/iou")


def epoch_table(csv_path: Path) -> pd.DataFrame:
    """One row per epoch, each column its last logged value in that epoch.

    Lightning writes epoch-level values on separate rows; after a resume, steps that ran
    twice appear twice and the later row (the resumed run's) wins. The validation of the best
    checkpoint after training (an epoch without training values) is left out.
    """
    frame = pd.read_csv(csv_path)
    if "epoch" not in frame:
        raise LightsegError(f"'{csv_path}' has no epoch column; is it a Lightning CSV log?")
    # LearningRateMonitor's rows carry no epoch: they belong to the epoch that follows them.
    frame["epoch"] = frame["epoch"].bfill().ffill()
    frame = frame.dropna(subset=["epoch"]).astype({"epoch": int})
    columns = [c for c in frame.columns if c not in ("epoch", "step")]
    table = frame.groupby("epoch")[columns].last().dropna(axis=1, how="all")
    trained = [c for c in table if c.startswith("train/")]
    if trained:  # drop the evaluation of the best checkpoint that follows training
        table = table[table[trained].notna().any(axis=1)]
    return table


def pyplot():
    """matplotlib's pyplot on the file-only backend (imported late: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def epoch_axis(axis, title: str) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_title(title)
    axis.set_xlabel("epoch")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def save(figure, title: str, out: Path) -> Path:
    figure.suptitle(title, fontsize=8)
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    pyplot().close(figure)
    return out


def plot_curves(run: Path, out: Path | None = None) -> Path:
    """Draw the run's curves into ``out`` (default ``<run>/curves.png``)."""
    plt = pyplot()
    csv_path = RunFolder(run).csv_log
    if not csv_path.is_file():
        raise LightsegError(
            f"No training log at '{csv_path}'. RUN must be a run folder "
            "(logs/<name>/runs/<time>/) trained with the CSV logger (logger=default or logger=csv)."
        )
    table = epoch_table(csv_path)
    if table.empty:
        raise LightsegError(f"'{csv_path}' holds no epoch-level values yet.")
    losses = [c for c in table if c in ("train/loss_epoch", "train/loss", "val/loss")]
    scores = [c for c in table if c.startswith("val/") and c != "val/loss" and "loss" not in c]
    rates = [c for c in table if c.startswith("lr-")]
    panels = [
        (p, title)
        for p, title in ((losses, "loss"), (scores, "validation"), (rates, "learning rate"))
        if p
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.8), squeeze=False)
    for axis, (columns, title) in zip(axes[0], panels, strict=True):
        for column in columns:
            series = table[column].dropna()
            axis.plot(series.index, series.values, marker="o", markersize=3, label=column)
        epoch_axis(axis, title)
    return save(figure, str(run), Path(out or Path(run) / "curves.png"))


def run_tables(row: Row) -> list[pd.DataFrame]:
    """The epoch tables of a configuration's runs that have a CSV log."""
    logs = [RunFolder(run.folder).csv_log for run in row.runs]
    return [epoch_table(log) for log in logs if log.is_file()]


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
    plt = pyplot()
    rows, _, _ = collect(Path(root), aliases=aliases, include_debug=include_debug)
    tables = {row.label: run_tables(row) for row in rows}
    logged = sorted({c for ts in tables.values() for t in ts for c in t if c.startswith("val/")})
    if not logged:
        raise LightsegError(
            f"No run under '{root}' has validation values in a CSV log (csv/metrics.csv): "
            "train with logger=default or logger=csv."
        )
    chosen = list(metrics) if metrics else [m for m in DEFAULT_CURVES if m in logged]
    unknown = [m for m in chosen if m not in logged]
    if unknown or not chosen:
        raise LightsegError(
            f"Curve(s) {unknown or list(DEFAULT_CURVES)} are in no CSV log under '{root}'. "
            f"Logged: {', '.join(logged)}."
        )
    figure, axes = plt.subplots(1, len(chosen), figsize=(5 * len(chosen), 3.8), squeeze=False)
    for axis, metric in zip(axes[0], chosen, strict=True):
        for label, runs in tables.items():
            curve = band(runs, metric)
            if curve.empty:
                continue
            line = axis.plot(curve.index, curve["mean"], marker="o", markersize=3)[0]
            line.set_label(f"{label} (n={int(curve['runs'].max())})")
            low, high = curve["mean"] - curve["std"], curve["mean"] + curve["std"]
            axis.fill_between(curve.index, low, high, color=line.get_color(), alpha=0.2)
        epoch_axis(axis, metric)
    return save(figure, f"{root}: mean ± std over runs", Path(out or Path(root) / "curves.png"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightseg.tools.plot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run", type=Path, nargs="?", help="run folder (holds csv/metrics.csv)")
    parser.add_argument("--runs", type=Path, help="folder of runs: compare configurations")
    parser.add_argument("--metrics", default=None, help="with --runs: comma-separated curves")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=ALIAS")
    parser.add_argument("--include-debug", action="store_true", help="keep debug=... runs")
    parser.add_argument("--out", type=Path, default=None, help="image file (default: */curves.png)")
    args = parser.parse_args(argv)
    if (args.run is None) == (args.runs is None):
        parser.error("give a run folder, or --runs <folder of runs>")
    with user_errors():
        if args.run is not None:
            out = plot_curves(args.run, args.out)
        else:
            metrics = [m.strip() for m in (args.metrics or "").split(",") if m.strip()]
            aliases = parse_aliases(args.label)
            out = plot_configurations(args.runs, metrics, args.out, aliases, args.include_debug)
        console.print(f"Wrote {out}")


if __name__ == "__main__":
    main()

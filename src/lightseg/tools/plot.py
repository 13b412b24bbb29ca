"""Training curves of one run from its CSV log: ``make plot RUN=logs/demo/runs/<time>``.

    python -m lightseg.tools.plot RUN [--out curves.png]

Three panels over epochs: losses (train and val), validation metrics (IoU, Dice, per class),
and the learning rate. Writes ``<RUN>/curves.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from lightseg.errors import LightsegError, user_errors
from lightseg.runs import RunFolder
from lightseg.utils.console import console


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


def plot_curves(run: Path, out: Path | None = None) -> Path:
    """Draw the run's curves into ``out`` (default ``<run>/curves.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

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
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.suptitle(str(run), fontsize=8)
    figure.tight_layout()
    out = Path(out or Path(run) / "curves.png")
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m lightseg.tools.plot", description=__doc__.split("\n")[0]
    )
    parser.add_argument("run", type=Path, help="run folder (holds csv/metrics.csv)")
    parser.add_argument(
        "--out", type=Path, default=None, help="image file (default RUN/curves.png)"
    )
    args = parser.parse_args(argv)
    with user_errors():
        console.print(f"Wrote {plot_curves(args.run, args.out)}")


if __name__ == "__main__":
    main()

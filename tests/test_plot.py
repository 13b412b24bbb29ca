"""`make plot`: per-epoch curves from a run's CSV log, duplicates from a resume resolved, and
the configurations of a folder of runs overlaid (mean ± std over seeds)."""

from __future__ import annotations

import math

import pytest
from lightning.pytorch.loggers import CSVLogger
from PIL import Image

from lightseg.errors import LightsegError
from lightseg.tools.plot import (
    band,
    csv_logs,
    epoch_table,
    main,
    plot_configurations,
    plot_curves,
    read_csv_log,
    run_tables,
)
from lightseg.tools.results import collect
from tests.runs import run_app
from tests.test_results import fake_run

# Lightning's layout, in one file as runs before per-part logs wrote it (csv/metrics.csv): step
# rows, epoch rows, a resumed part appended that re-logs epoch 1, and the evaluation of the
# best checkpoint after training (epoch 2, no training values).
CSV = """epoch,lr-AdamW,step,train/loss_epoch,train/loss_step,val/dice,val/loss
,0.001,0,,,,
0,,0,,0.9,,
0,,1,0.8,,,
0,,1,,,0.40,0.7
,0.0005,2,,,,
1,,2,,0.7,,
1,,3,,0.6,,
1,,3,0.65,,,
1,,3,,,0.50,0.6
,0.0004,2,,,,
1,,3,,0.55,,
1,,3,0.60,,,
1,,3,,,0.55,0.5
2,,3,,,0.55,0.5
"""


@pytest.fixture
def run(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(CSV)
    return tmp_path


def test_epoch_table_keeps_the_last_value_per_epoch(run):
    table = epoch_table(run)
    assert table.index.tolist() == [0, 1]
    assert table["val/dice"].tolist() == [0.40, 0.55]
    assert table["train/loss_epoch"].tolist() == [0.8, 0.60]
    assert table["lr-AdamW"].tolist() == [0.001, 0.0004]  # logged without an epoch


def test_plot_writes_a_png_with_one_panel_per_kind(run):
    out = plot_curves(run)
    assert out == run / "curves.png"
    width, height = Image.open(out).size
    assert (width, height) == (15 * 120, int(3.8 * 120))  # 3 panels of 5 x 3.8 inches, 120 dpi


def test_plot_without_a_csv_log_says_what_is_needed(tmp_path):
    with pytest.raises(LightsegError, match="trained with the CSV logger"):
        plot_curves(tmp_path)


def log_part(run, *epochs: tuple[int, int, float | None], final: float | None = None) -> None:
    """What one process writes with Lightning's CSVLogger (as configs/logger/csv.yaml makes
    it): per ``(epoch, batches, val/dice)`` a learning-rate row, one row per batch, then the
    validation (None: killed before it) and the epoch's training loss; at the end, if given,
    the validation of the best checkpoint (the next epoch, no training values)."""
    logger = CSVLogger(str(run), name="csv")
    step = 0
    for epoch, batches, dice in epochs:
        step = 3 * epoch  # 3 batches per epoch
        logger.log_metrics({"lr-AdamW": 0.1 / (epoch + 1)}, step=step)
        for batch in range(batches):
            logger.log_metrics({"epoch": epoch, "train/loss_step": 1 - dice_of(epoch)}, step=step)
            step += 1 if batch < batches - 1 else 0
        if dice is not None:
            logger.log_metrics({"epoch": epoch, "val/dice": dice}, step=step)
            logger.log_metrics({"epoch": epoch, "train/loss_epoch": 1 - dice}, step=step)
    if final is not None:
        logger.log_metrics({"epoch": epochs[-1][0] + 1, "val/dice": final}, step=step + 1)
    logger.finalize("success")


def dice_of(epoch: int) -> float:
    return 0.1 * (epoch + 1)


def test_a_log_resumed_twice_after_hard_kills_holds_each_epoch_once(tmp_path):
    # started: epochs 0-2 validated, then SIGKILL while last.ckpt (end of epoch 1) was written
    log_part(tmp_path, (0, 3, 0.30), (1, 3, 0.40), (2, 3, 0.50))
    # resumed from the end of epoch 1: epoch 2 again, then SIGKILL mid-epoch 3
    log_part(tmp_path, (2, 3, 0.52), (3, 2, None))
    # resumed from the end of epoch 2: epoch 3, then the best checkpoint's validation
    log_part(tmp_path, (3, 3, 0.61), final=0.61)
    # ddp_spawn: the best checkpoint validated in a new process, which logs epoch 0, step 0
    spawned = CSVLogger(str(tmp_path), name="csv")
    spawned.log_metrics({"epoch": 0, "val/dice": 0.99}, step=0)
    spawned.finalize("success")

    assert [p.parent.name for p in csv_logs(tmp_path)] == [f"version_{n}" for n in range(4)]
    validated = read_csv_log(tmp_path).dropna(subset=["val/dice"])
    assert validated["epoch"].tolist() == [0, 1, 2, 3, 4]
    assert validated["val/dice"].tolist() == [0.30, 0.40, 0.52, 0.61, 0.61]
    steps = read_csv_log(tmp_path).dropna(subset=["train/loss_step"])["step"].tolist()
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 12  # each batch once
    table = epoch_table(tmp_path)
    assert table.index.tolist() == [0, 1, 2, 3]
    assert table["val/dice"].tolist() == [0.30, 0.40, 0.52, 0.61]
    assert table["train/loss_epoch"].tolist() == pytest.approx([0.70, 0.60, 0.48, 0.39])
    assert table["lr-AdamW"].tolist() == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025])


def logged_run(folder, arch: str, seed: int, dice: list[float]) -> None:
    """A finished run (as test_results.fake_run) with a CSV log of val/dice and val/loss."""
    fake_run(folder, [f"model.arch={arch}", f"seed={seed}"], {"test/dice": dice[-1]})
    lines = ["epoch,step,train/loss_epoch,val/dice,val/loss"]
    for epoch, value in enumerate(dice):
        lines += [f"{epoch},{epoch},{1 - value},,", f"{epoch},{epoch},,{value},{1 - value}"]
    (folder / "csv").mkdir()
    (folder / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")


def test_configurations_are_overlaid_as_mean_and_std_over_seeds(tmp_path):
    logged_run(tmp_path / "0", "FPN", 0, [0.4, 0.6, 0.7])
    logged_run(tmp_path / "1", "FPN", 1, [0.6, 0.8])  # stopped one epoch earlier
    logged_run(tmp_path / "2", "Unet", 0, [0.5, 0.5, 0.5])
    fake_run(tmp_path / "3", ["model.arch=Unet", "seed=1"], None, status="NaN")  # no log
    rows = {row.label: row for row in collect(tmp_path)[0]}
    fpn = band(run_tables(rows["arch=FPN"]), "val/dice")
    assert fpn["mean"].tolist() == pytest.approx([0.5, 0.7, 0.7])
    assert fpn["std"].tolist()[:2] == pytest.approx([0.1414214, 0.1414214])
    assert math.isnan(fpn["std"].iloc[2]) and fpn["runs"].tolist() == [2, 2, 1]
    unet = band(run_tables(rows["arch=Unet"]), "val/loss")
    assert unet["mean"].tolist() == pytest.approx([0.5] * 3) and unet["runs"].max() == 1

    run_app(main, f"runs={tmp_path}")  # as make plot RUNS=<folder>
    width, height = Image.open(tmp_path / "curves.png").size
    assert (width, height) == (2 * 5 * 120, int(3.8 * 120))  # val/loss and val/dice panels
    out = plot_configurations(tmp_path, ["val/dice"], tmp_path / "dice.png")
    assert Image.open(out).size[0] == 5 * 120


def test_configuration_curves_name_what_is_missing(tmp_path):
    fake_run(tmp_path / "0", ["model.arch=FPN"], {"test/dice": 0.5})
    with pytest.raises(LightsegError, match=r"No run under .* has validation values"):
        plot_configurations(tmp_path)
    logged_run(tmp_path / "1", "Unet", 0, [0.5])
    with pytest.raises(LightsegError, match=r"\['val/miou'\] are in no CSV log.*val/dice"):
        plot_configurations(tmp_path, ["val/miou"])
    with pytest.raises(SystemExit) as stopped:
        run_app(main)  # neither a run nor runs
    assert stopped.value.code == 1

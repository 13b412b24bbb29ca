"""`make plot`: per-epoch curves from a run's CSV log, duplicates from a resume resolved, and
the configurations of a folder of runs overlaid (mean ± std over seeds)."""

from __future__ import annotations

import math

import pytest
from PIL import Image

from lightseg.errors import LightsegError
from lightseg.tools.plot import (
    band,
    epoch_table,
    main,
    plot_configurations,
    plot_curves,
    run_tables,
)
from lightseg.tools.results import collect
from tests.test_results import fake_run

# Lightning's layout: step rows, epoch rows, a resumed part that re-logs epoch 1, and the
# evaluation of the best checkpoint after training (epoch 2, no training values).
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
    table = epoch_table(run / "csv" / "metrics.csv")
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


def test_csv_log_keeps_rows_written_by_another_writer(tmp_path):
    from lightseg.utils.loggers import ResumableCSVLogger

    first = ResumableCSVLogger(str(tmp_path), name="csv", version="")
    second = ResumableCSVLogger(
        str(tmp_path), name="csv", version=""
    )  # a resumed run, or ddp_spawn
    first.log_metrics({"train/loss": 0.5, "epoch": 0}, step=0)
    first.save()
    second.log_metrics({"val/dice": 0.25, "epoch": 0}, step=1)
    second.save()
    first.log_metrics({"train/loss": 0.4, "epoch": 1}, step=2)
    first.save()
    assert (tmp_path / "csv" / "metrics.csv").read_text().splitlines() == [
        "epoch,step,train/loss,val/dice",
        "0,0,0.5,",
        "0,1,,0.25",
        "1,2,0.4,",
    ]


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

    main(["--runs", str(tmp_path)])  # as make plot RUNS=<folder>
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
    with pytest.raises(SystemExit):
        main([])  # neither a run nor --runs

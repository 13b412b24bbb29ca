"""`make plot`: per-epoch curves from a run's CSV log, duplicates from a resume resolved."""

from __future__ import annotations

import pytest
from PIL import Image

from lightseg.errors import LightsegError
from lightseg.tools.plot import epoch_table, plot_curves

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

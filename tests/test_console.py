"""What `make train` prints: a short start-up summary, no third-party noise, unwrapped paths."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from lightseg.utils.console import print_config, print_metrics
from tests.conftest import make_config

REPO = Path(__file__).resolve().parents[1]
#: Lines no run should print: deprecation walls, tips and adverts, W&B's own chatter.
NOISE = ("deprecat", "Tip:", "litlogger", "LeafSpec", "Symlinked", "wandb:", "FLOPs", "anonymous")


def outside_the_progress_bar(output: str) -> list[str]:
    """Lines other than the progress bars' (and the wrapped metrics a bar shows beside it)."""
    return [
        line
        for line in output.splitlines()
        if line.strip() and "━" not in line and not line.startswith(" " * 20)
    ]


def test_a_piped_demo_run_prints_under_60_quiet_lines_with_whole_paths(tmp_path, data_dir):
    command = [
        sys.executable,
        "-m",
        "lightseg.train",
        "experiment=demo",  # its W&B logger (offline), workers, cache and callbacks as shipped
        "trainer.max_epochs=2",
        "data.image_size=64",
        "data.source.num_cases=20",
        f"paths.data_dir={data_dir}",
        f"paths.log_dir={tmp_path / ('a-long-folder-name-' * 4) / 'logs'}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO / "src")}
    env.pop("COLUMNS", None)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    lines = outside_the_progress_bar(output)
    assert len(lines) < 60, "\n".join(lines)
    noisy = [line for line in lines if any(word in line for word in NOISE)]
    assert noisy == []
    assert re.search(r"^network\s+Unet 14\.3 M parameters \(14\.3 M trainable\)", output, re.M)
    assert re.search(r"^demo\s+experiment=demo data=demo model=unet_resnet18", output, re.M)
    best = [line for line in lines if line.startswith("Best checkpoint: ")]
    assert len(best) == 1 and Path(best[0].removeprefix("Best checkpoint: ")).is_file()
    assert re.search(r"best checkpoint \(epoch [01], step \d+\) on val and test", output)


def test_print_config_full_prints_the_whole_tree_and_false_nothing(tmp_path, capsys):
    cfg = make_config(tmp_path, "experiment=demo", "print_config=true")
    print_config(cfg, {"experiment": "demo", "model": "unet_resnet18"})
    summary = capsys.readouterr().out.splitlines()
    assert 6 <= len(summary) <= 10 and summary[0].split() == [
        "demo",
        "experiment=demo",
        "model=unet_resnet18",
    ]
    cfg.print_config = "full"
    print_config(cfg)
    tree = capsys.readouterr().out
    assert (
        len(tree.splitlines()) > 100
        and "weight_decay: 0.0001" in tree
        and "pct_start: 0.15" in tree
    )
    cfg.print_config = False
    print_config(cfg)
    assert capsys.readouterr().out == ""


def test_the_metrics_table_has_a_row_per_metric_and_a_column_per_stage(capsys):
    print_metrics(
        {"best/epoch": 3, "best/step": 40, "val/dice": 0.5, "test/dice": 0.25, "val/iou_car": None},
        title="demo: best checkpoint (epoch 3, step 40) on val and test",
    )
    out = capsys.readouterr().out
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") == 4}
    assert set(rows) == {"dice", "iou_car"}  # no rows for best/epoch and best/step
    assert "0.5000" in rows["dice"] and "0.2500" in rows["dice"]
    assert rows["iou_car"].split("│")[2].strip() == ""  # no value: empty, never 0.0

"""make bench on tiny settings: the loader table and the time-to-accuracy record hold together."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightseg.data.ph2 import PH2
from tests.conftest import make_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~1 min: the whole bench in small; .ci/run runs it after make test
def test_loader_table_and_time_to_accuracy(tmp_path, data_dir):
    output = tmp_path / "bench"
    command = [
        sys.executable,
        "-m",
        "benchmarks.bench",
        "--parts=training,ddp,loaders,time-to-accuracy",
        "--ddp-repeats=1",
        "--steps=2",
        "--warmup=1",
        "--repeats=1",
        "--datasets=demo",
        "--loader-size=32",
        "--loader-samples=16",
        "--workers=1",
        "--gpu-rate=100",
        "--target=0.0",  # both reach it after their first epoch
        "--seeds=0",
        f"--output={output}",
        "data.image_size=32",
        "data.num_workers=0",
        "data.source.num_cases=40",  # 24 training cases: one batch of the plain loop's 16
        f"paths.data_dir={data_dir}",
    ]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((output / "bench.json").read_text())

    (training,) = results["training"]  # CPU: one precision
    assert training["size"] == "32x32" and training["precision"] == "32-true"
    assert training["plain"] > 0 and training["lightseg"] > 0
    assert training["plain/lightseg"] == training["plain"] / training["lightseg"]
    assert [len(training["runs"][name]) for name in ("plain", "lightseg")] == [1, 1]

    (ddp,) = results["ddp"]  # 2 processes over gloo: lightseg's ddp_spawn vs a plain DDP loop
    assert ddp["processes"] == "2 x CPU (gloo)" and ddp["plain"] > 0 and ddp["lightseg"] > 0
    assert ddp["plain/lightseg"] == ddp["plain"] / ddp["lightseg"]
    assert ddp["plain/lightseg CPU time"] == pytest.approx(
        ddp["runs"]["plain"][0]["cpu"] / ddp["runs"]["lightseg"][0]["cpu"]
    )
    assert [len(ddp["runs"][name]) for name in ("plain", "lightseg")] == [1, 1]

    rows = results["loaders"]
    assert [(r["dataset"], r["cache"]) for r in rows] == [("demo", "no"), ("demo", "yes")]
    for row in rows:
        assert row["per worker"] == row["workers=1"] > 0
        assert row["workers for 100/s"] == math.ceil(100 / row["per worker"])

    accuracy = results["time_to_accuracy"]
    assert accuracy["target"] == 0.0 and accuracy["monitor"] == "val/dice"
    assert [r["epoch"] for r in accuracy["runs"]["plain"] + accuracy["runs"]["lightseg"]] == [0, 0]
    assert accuracy["plain_s"] > 0 and accuracy["lightseg_s"] > 0
    assert accuracy["ratio"] == accuracy["plain_s"] / accuracy["lightseg_s"]
    markdown = (output / "bench.md").read_text()
    assert "DDP training" in markdown and "Time to accuracy" in markdown
    assert "| demo | 32px | yes |" in markdown


def test_the_ph2_sized_fixture_has_ph2_layout_and_size(tmp_path):
    from benchmarks.loaders import write_ph2_sized

    root = write_ph2_sized(tmp_path / "PH2Dataset", cases=6)
    samples = PH2(root).find()
    assert len(samples) == 6
    for sample in samples:
        image = Image.open(sample.image)
        assert image.mode == "RGB" and 763 <= image.width <= 767 and 553 <= image.height <= 576
        assert Image.open(sample.mask).mode == "1" and Image.open(sample.mask).size == image.size
    mask = np.asarray(Image.open(samples[0].mask).convert("L"))
    assert 0 < (mask > 0).mean() < 0.5  # the lesion survived the rescaling
    assert make_config(tmp_path, "data=ph2").data.cache.enabled is True  # PH2 trains from it


def test_the_recipe_part_skips_an_experiment_whose_data_is_absent(tmp_path, data_dir, capsys):
    from benchmarks.recipe import present, recipe_rows

    empty = [f"paths.data_dir={tmp_path / 'nothing'}"]
    assert recipe_rows(["ph2_unet"], [0], tmp_path, empty) == []
    assert "ph2_unet: dataset not present, skipped" in capsys.readouterr().out
    assert present(["experiment=ph2_unet", f"paths.data_dir={data_dir}"], tmp_path)  # fixture

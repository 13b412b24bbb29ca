"""README's "Extending lightseg" recipes, done the way a fork does them.

The code blocks of that section are written out as files of a fork (``extensions/*.py``,
``configs/<group>/*.yaml``) outside the package, and training and evaluation run on them from
the command line, selected by config alone. If the README's recipes stop working, this fails.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lightseg import CONFIG_DIR
from lightseg.tools.plot import read_csv_log

README = Path(CONFIG_DIR).parent / "README.md"
BLOCK = re.compile(r"```(?:python|yaml)\n# ((?:extensions|configs|tests)/[^\n]+)\n(.*?)```", re.S)


def recipes() -> dict[str, str]:
    """``{path: file text}`` for every file the README's extending section shows."""
    text = README.read_text()
    section = text.split("## Extending lightseg", 1)[1].split("\n## ", 1)[0]
    return {path: body for path, body in BLOCK.findall(section)}


@pytest.fixture(scope="module")
def fork(tmp_path_factory) -> Path:
    """A fork's root: the recipe files, and a small dataset in the recipe's layout."""
    root = tmp_path_factory.mktemp("fork")
    for path, body in recipes().items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(body)
    (root / "extensions" / "__init__.py").write_text("")
    data = root / "data" / "paired_folder"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for index in range(16):
        image = rng.integers(0, 80, (40 + index % 3, 56, 3), dtype=np.uint8)
        mask = np.zeros(image.shape[:2], np.uint8)
        top, left = rng.integers(4, 18), rng.integers(4, 30)
        mask[top : top + 16, left : left + 20] = 255
        image[mask > 0] += 150
        Image.fromarray(image).save(data / f"case{index:02d}.png")
        Image.fromarray(mask).save(data / f"case{index:02d}_mask.png")
    return root


def run(fork: Path, module: str, *args: str) -> subprocess.CompletedProcess:
    """``python -m <module> ARGS`` from the fork's root, its configs on Hydra's search path."""
    command = [sys.executable, "-m", module, f"hydra.searchpath=[file://{fork / 'configs'}]"]
    done = subprocess.run([*command, *args], cwd=fork, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_the_readme_shows_all_five_recipes_and_their_contract_test():
    paths = set(recipes())
    assert {p.split("/")[1] for p in paths if p.startswith("configs/")} == {
        "data",
        "model",
        "loss",
        "metrics",
        "module",
    }
    assert len([p for p in paths if p.startswith("extensions/")]) == 5
    assert "tests/test_extensions.py" in paths


def test_the_recipes_pass_the_contract_tests(fork):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/test_extensions.py",
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        cwd=fork,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"\b1[0-9] passed", done.stdout), done.stdout[-1000:]


def test_a_forks_dataset_network_loss_and_metric_train_and_evaluate(fork):
    logs = fork / "logs"
    run(
        fork,
        "lightseg.train",
        "data=paired_folder",
        "model=tiny_net",
        "loss=[ce,dice,smoothness]",
        "metrics=binary_area",
        "module=flip_consistency",
        "trainer.max_epochs=2",
        "trainer.accelerator=cpu",
        "logger=csv",
        "data.num_workers=0",
        "data.batch_size=4",
        "data.image_size=64",
        "print_config=false",
        "callbacks.progress_bar=null",
        f"paths.log_dir={logs}",
    )
    (folder,) = (logs / "default" / "runs").iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    for stage in ("val", "test"):
        assert 0.0 <= metrics[f"{stage}/area_error"] <= 1.0
        assert 0.0 <= metrics[f"{stage}/dice"] <= 1.0
    log = read_csv_log(folder)
    for term in ("smoothness", "consistency"):  # a loss term's and the training step's
        values = log[f"train/loss_{term}"].dropna()
        assert len(values) == 2 and (values > 0).all(), term
    assert log["val/area_error"].notna().sum() == 3  # two epochs, then the best checkpoint
    checkpoint = torch.load(folder / "checkpoints" / "best.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    # in_channels: filled in from the data (the network takes it)
    model = {"_target_": "extensions.tiny_net.TinyNet", "width": 16, "in_channels": 3}
    assert hparams["model"] == model
    assert "smoothness" in hparams["loss"] and "area_error" in hparams["metrics"]
    assert hparams["consistency"] == 0.1
    assert checkpoint["module"] == "extensions.flip_consistency.FlipConsistency"
    assert any(k.startswith("net.body.") for k in checkpoint["state_dict"])

    out = fork / "eval"
    run(
        fork,
        "lightseg.tools.eval",
        f"ckpt_path={folder}/checkpoints/best.ckpt",
        f"output_dir={out}",
    )
    report = json.loads((out / "eval.json").read_text())
    assert 0.0 <= report["metrics"]["plain"]["area_error"] <= 1.0
    per_image = pd.read_csv(out / "per_image.csv")
    assert len(per_image) == report["images"] and "area_error" in per_image
    assert per_image["area_error"].mean() == pytest.approx(
        report["metrics"]["plain"]["area_error"], abs=1e-5
    )


def test_one_off_network_and_metric_from_the_command_line(fork):
    done = run(
        fork,
        "lightseg.train",
        "experiment=demo",
        "debug=fdr",
        "model=custom",
        "model._target_=extensions.tiny_net.TinyNet",
        "+model.width=8",
        "+metrics.area_error._target_=extensions.area_error.AreaError",
        "data.image_size=64",
        "data.source.num_cases=12",
        "trainer.accelerator=cpu",
        "print_config=false",
        f"paths.log_dir={fork / 'logs'}",
    )
    assert "area_error" in done.stdout
    (folder,) = (fork / "logs" / "demo" / "runs").iterdir()
    metrics = json.loads((folder / "metrics.json").read_text())
    assert 0.0 <= metrics["test/area_error"] <= 1.0

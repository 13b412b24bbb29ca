"""From runs to tables: `make table` over run folders, mean ± std, best in bold, failures listed."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import yaml

from lightseg.errors import LightsegError
from lightseg.tools.results import write_tables
from tests.runs import run_cli, tiny_cli_run


def fake_run(folder: Path, overrides: list[str], metrics: dict | None, status: str | None = None):
    """A run folder as a Hydra job leaves it: .hydra/overrides.yaml, hydra.yaml choices, metrics."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    choices = {"experiment": "demo", "loss": "ce_dice"}
    choices.update({o.split("=")[0]: o.split("=")[1] for o in overrides if o.startswith("loss=")})
    (folder / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}})
    )
    config = {
        "name": "demo",
        "seed": 0,
        "model": {"arch": "Unet"},
        "paths": {"output_dir": str(folder)},
    }
    for override in overrides:
        key, value = override.split("=")
        if key == "model.arch":
            config["model"]["arch"] = value
        if key == "seed":
            config["seed"] = int(value)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    if metrics is not None:
        (folder / "metrics.json").write_text(json.dumps(metrics))
    if status is not None:
        (folder / "run_info.json").write_text(json.dumps({"status": "failed", "message": status}))


def test_table_rows_are_configurations_with_mean_std_best_in_bold_and_failures_listed(tmp_path):
    sweep = tmp_path / "sweep"
    runs = [  # arch, seed, test/dice, val/loss (None: the run failed)
        ("FPN", 0, 0.80, 0.30),
        ("FPN", 1, 0.90, 0.20),
        ("Unet", 0, 0.70, 0.10),
        ("Unet", 1, 0.74, 0.15),
        ("Unet", 2, 0.78, 0.20),
        ("Unet", 3, None, None),
    ]
    for number, (arch, seed, dice, loss) in enumerate(runs):
        metrics = None if dice is None else {"test/dice": dice, "val/loss": loss}
        overrides = ["experiment=demo", f"model.arch={arch}", f"seed={seed}"]
        fake_run(sweep / str(number), overrides, metrics, status=None if metrics else "NaN")
    (sweep / "0" / "wandb" / "files").mkdir(parents=True)  # not a run: W&B's copy of a config
    (sweep / "0" / "wandb" / "files" / "config.yaml").write_text("a: 1\n")

    md, tex = write_tables(sweep, ["test/dice", "val/loss"])

    # FPN: mean(0.8, 0.9) = 0.85, sample std = 0.0707; Unet: mean(.70, .74, .78) = .74, std .04
    assert md.read_text().splitlines()[:4] == [
        "| Configuration | test/dice | val/loss | Runs |",
        "|---|---:|---:|---:|",
        "| model.arch=FPN | **0.850 ± 0.071** | 0.250 ± 0.071 | 2 |",
        "| model.arch=Unet | 0.740 ± 0.040 | **0.150 ± 0.050** | 3/4 |",
    ]
    assert "- 5 (model.arch=Unet, seed=3): failed: NaN" in md.read_text()
    lines = tex.read_text().splitlines()
    assert r"Configuration & test/dice & val/loss & Runs \\" in lines
    assert r"model.arch=FPN & \textbf{0.850 $\pm$ 0.071} & 0.250 $\pm$ 0.071 & 2 \\" in lines
    assert r"model.arch=Unet & 0.740 $\pm$ 0.040 & \textbf{0.150 $\pm$ 0.050} & 3/4 \\" in lines


def test_group_choices_label_rows_and_latex_is_escaped(tmp_path):
    fake_run(tmp_path / "a", ["loss=ce_dice", "seed=0"], {"test/iou": 0.5})
    fake_run(tmp_path / "b", ["loss=focal", "seed=0"], {"test/iou": 0.25})
    md, tex = write_tables(tmp_path, ["test/iou"], digits=2)
    assert "| loss=ce_dice | **0.50** | 1 |" in md.read_text()
    assert r"loss=ce\_dice & \textbf{0.50} & 1 \\" in tex.read_text()


def test_table_errors_name_the_folder(tmp_path):
    with pytest.raises(LightsegError, match="No runs found under"):
        write_tables(tmp_path)
    with pytest.raises(LightsegError, match="is not a folder"):
        write_tables(tmp_path / "nope")
    fake_run(tmp_path / "a", ["seed=0"], {"test/dice": 0.5})
    with pytest.raises(
        LightsegError, match=r"\['test/miou'\] are in none of the 1 runs.*test/dice"
    ):
        write_tables(tmp_path, ["test/miou"])


def test_demo_multirun_turns_into_tables(one_thread, monkeypatch, tmp_path, data_dir):
    # as in: make train EXP=demo ARGS="-m seed=0,1 model.arch=Unet,FPN ..."
    run_cli(monkeypatch, *tiny_cli_run(tmp_path, data_dir), "-m", "seed=0,1", "model.arch=Unet,FPN")
    (sweep,) = (tmp_path / "logs" / "demo" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    dice = {}
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        arch = next(o.split("=")[1] for o in overrides if o.startswith("model.arch="))
        dice.setdefault(arch, []).append(
            json.loads((job / "metrics.json").read_text())["test/dice"]
        )
    assert {arch: len(values) for arch, values in dice.items()} == {"Unet": 2, "FPN": 2}

    md, tex = write_tables(sweep, ["test/dice"])

    best = max(round(statistics.fmean(v), 3) for v in dice.values())
    for arch, values in dice.items():
        text = f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
        text = f"**{text}**" if round(statistics.fmean(values), 3) == best else text
        assert f"| model.arch={arch} | {text} | 2 |" in md.read_text()
    assert tex.read_text().count(r"$\pm$") == 2 + 1  # two rows, and the comment line

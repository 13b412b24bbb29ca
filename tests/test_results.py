"""From runs to tables: `make table` over run folders: mean ± std over runs, per-image bootstrap
confidence intervals and paired tests, best in bold, failed and debug runs listed."""

from __future__ import annotations

import csv
import json
import math
import shlex
import statistics
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from scipy import stats

from lightseg import CONFIG_DIR
from lightseg.errors import LightsegError
from lightseg.runs import RunFolder
from lightseg.tools.comparison import lower_is_better
from lightseg.tools.eval import evaluate
from lightseg.tools.results import NumbersFrom, eval_results, short_names
from lightseg.tools.significance import two_level_ci, two_level_p
from lightseg.tools.table import main, results, write_tables
from tests.runs import run_app, run_cli, tiny_cli_run

#: The paired differences of scipy's documentation of ``wilcoxon`` (two-sided exact p-value
#: 0.041259765625 = 338 / 8192: 24 is the smaller rank sum of 15 distinct differences).
DIFFERENCES = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]
DOCUMENTED_P = 0.041259765625


def fake_run(
    folder: Path,
    overrides: list[str],
    metrics: dict | None,
    status: str | None = None,
    per_image: dict[str, dict[str, float]] | None = None,
    choices: dict | None = None,
):
    """A run folder as a Hydra job leaves it: .hydra/overrides.yaml, hydra.yaml choices,
    config.yaml, metrics.json, and per_image.csv (``{column: {image id: value}}``)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    choices = {"experiment": "demo", "loss": "ce_dice", "debug": None, **(choices or {})}
    choices.update({o.split("=")[0]: o.split("=")[1] for o in overrides if o.startswith("loss=")})
    (folder / ".hydra" / "hydra.yaml").write_text(
        yaml.safe_dump({"hydra": {"runtime": {"choices": choices}}})
    )
    config = {
        "name": "demo",
        "seed": 0,
        "model": {"arch": "Unet"},
        "paths": {"output_dir": str(folder)},
        "metrics": {
            "dice": {"_target_": "lightseg.metrics.Dice"},
            "hd95": {"_target_": "lightseg.metrics.HD95"},
        },
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
    if per_image:
        write_csv(folder / "per_image.csv", per_image)


def write_csv(path: Path, columns: dict[str, dict[str, float]], **keys: str) -> None:
    ids = list(next(iter(columns.values())))
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["id", *keys, *columns])
        for i in ids:
            writer.writerow([i, *keys.values(), *(columns[c].get(i, "") for c in columns)])


def images(values) -> dict[str, float]:
    return {f"img{i:02d}": float(v) for i, v in enumerate(values)}


def paired_sweep(root: Path) -> np.ndarray:
    """FPN and Unet, two seeds each, the same 15 test images. Per image and averaged over the
    seeds, Unet's Dice is FPN's minus DIFFERENCES / 1000. Returns FPN's per-image means."""
    base = 0.6 + 0.02 * np.arange(15)
    unet = base - np.array(DIFFERENCES) / 1000
    runs = [
        ("FPN", 0, 0.86, base + 0.01),
        ("FPN", 1, 0.84, base - 0.01),
        ("Unet", 0, 0.81, unet + 0.005),
        ("Unet", 1, 0.79, unet - 0.005),
    ]
    for number, (arch, seed, dice, per_image) in enumerate(runs):
        fake_run(
            root / str(number),
            [f"model.arch={arch}", f"seed={seed}"],
            {"test/dice": dice},
            per_image={"dice": images(per_image)},
        )
    return base


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
    # (no per_image.csv in these runs: no per-image columns)
    assert md.read_text().splitlines()[:4] == [
        "| Configuration | test/dice | per image [95% CI] | p (MDD) | val/loss "
        "| per image [95% CI] | p (MDD) | Runs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
        "| arch=FPN | **0.850 ± 0.071** | - | - | 0.250 ± 0.071 | - | - | 2 |",
        "| arch=Unet | 0.740 ± 0.040 | - | - | **0.150 ± 0.050** | - | - | 3/4 |",
    ]
    assert "  - 5 (arch=Unet, seed=3): failed: NaN" in md.read_text()
    assert "- test/dice: no per-image values in any run: no CI, no p." in md.read_text()
    lines = tex.read_text().splitlines()
    assert r" & \multicolumn{3}{c}{test/dice} & \multicolumn{3}{c}{val/loss} &  \\" in lines
    assert (
        r"arch=FPN & \textbf{0.850 $\pm$ 0.071} & - & - & 0.250 $\pm$ 0.071 & - & - & 2 \\" in lines
    )
    assert (
        r"arch=Unet & 0.740 $\pm$ 0.040 & - & - & \textbf{0.150 $\pm$ 0.050} & - & - & 3/4 \\"
        in lines
    )


def test_group_choices_label_rows_and_latex_is_escaped(tmp_path):
    fake_run(tmp_path / "a", ["loss=ce_dice", "seed=0"], {"test/iou": 0.5})
    fake_run(tmp_path / "b", ["loss=focal", "seed=0"], {"test/iou": 0.25})
    md, tex = write_tables(tmp_path, ["test/iou"], digits=2)
    assert "| loss=ce_dice | **0.50** | - | - | 1 |" in md.read_text()
    assert r"loss=ce\_dice & \textbf{0.50} & - & - & 1 \\" in tex.read_text()
    assert "One run only (no standard deviation" in md.read_text()


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


def test_per_image_ci_and_paired_p_of_each_configuration(tmp_path):
    fpn = paired_sweep(tmp_path)
    options = {"resamples": 2000, "seed": 3, "test": "wilcoxon"}
    table = results(tmp_path, ["test/dice"], **options)
    cells = {label: table.cells["test/dice", label] for label in ("arch=FPN", "arch=Unet")}
    # each image counts once, with its mean over the two seeds
    assert list(cells["arch=FPN"].images.values()) == pytest.approx(fpn)
    expected = stats.bootstrap(
        (fpn,),
        np.mean,
        n_resamples=2000,
        method="percentile",
        rng=np.random.default_rng(3),
    ).confidence_interval
    assert cells["arch=FPN"].ci == pytest.approx((expected.low, expected.high))
    assert expected.low < fpn.mean() < expected.high
    assert cells["arch=FPN"].p_text == "best" and cells["arch=FPN"].p is None
    assert cells["arch=Unet"].p == pytest.approx(DOCUMENTED_P)
    # MDD over images: (z_0.975 + z_0.8) * sd(differences) / sqrt(15), the differences being
    # DIFFERENCES / 1000 (the seeds' offsets cancel in each image's mean)
    mdd = (1.959964 + 0.841621) * np.std(DIFFERENCES, ddof=1) / 1000 / math.sqrt(15)
    assert cells["arch=Unet"].mdd == pytest.approx(mdd, rel=1e-6) and mdd == pytest.approx(
        0.0273, abs=1e-4
    )
    assert cells["arch=Unet"].difference == pytest.approx(-sum(DIFFERENCES) / 15000)

    md, tex = write_tables(tmp_path, ["test/dice"], **options)
    low, high = expected.low, expected.high
    assert (
        f"| arch=FPN | 0.850 ± 0.014 | **{fpn.mean():.3f} [{low:.3f}, {high:.3f}]** | best | 2 |"
        in md.read_text()
    )
    assert "| arch=Unet | 0.800 ± 0.014 | 0.719 [" in md.read_text()  # 0.74 - 314 / 15000
    assert "| 0.041 (0.027) | 2 |" in md.read_text()
    # significant (p < 0.05) though below the MDD: no "cannot resolve" note
    assert "cannot resolve" not in md.read_text()
    assert "p: two-sided Wilcoxon signed-rank test over images" in md.read_text()
    assert "(2000 resamples of the images, seed 3)" in md.read_text()
    assert "minimal detectable difference (MDD)" in md.read_text()
    assert r"\caption{Mean $\pm$ sample standard deviation" in tex.read_text()
    assert r"& 0.041 (0.027) & 2 \\" in tex.read_text()
    # the same seed gives the same table; another seed another interval
    assert write_tables(tmp_path, ["test/dice"], **options)[0].read_text() == md.read_text()
    other = results(tmp_path, ["test/dice"], resamples=2000, seed=4, test="wilcoxon")
    assert other.cells["test/dice", "arch=FPN"].ci != cells["arch=FPN"].ci


def test_rows_tested_on_other_images_are_not_paired(tmp_path):
    fake_run(
        tmp_path / "a",
        ["model.arch=FPN"],
        {"test/dice": 0.9},
        per_image={"dice": images([0.9, 0.8, 0.7])},
    )
    other = {"img00": 0.5, "img01": 0.6, "img99": 0.4}
    fake_run(tmp_path / "b", ["model.arch=Unet"], {"test/dice": 0.5}, per_image={"dice": other})
    md = write_tables(tmp_path, ["test/dice"])[0].read_text()
    assert "| arch=Unet | 0.500 | 0.500 [" in md and "] | n/a | 1 |" in md
    assert (
        "- test/dice: arch=Unet was tested on other images than the best row (arch=FPN): "
        "not paired, no p." in md
    )


def test_a_metric_missing_in_some_runs_is_named(tmp_path):
    fake_run(tmp_path / "a", ["model.arch=FPN", "seed=0"], {"test/dice": 0.9, "test/hd95": 3.0})
    fake_run(tmp_path / "b", ["model.arch=FPN", "seed=1"], {"test/dice": 0.8})
    md = write_tables(tmp_path, ["test/dice", "test/hd95"])[0].read_text()
    assert "- test/hd95: no value in 1 of 2 runs (b)." in md
    assert "| demo | **0.850 ± 0.071** | - | - | **3.000** | - | - | 2 |" in md


def test_distances_are_best_when_lowest(tmp_path):
    # the metric class (lightseg.metrics.HD95, from the run's config) says lower is better
    fake_run(tmp_path / "a", ["model.arch=FPN"], {"test/hd95": 3.0, "test/dice": 0.9})
    fake_run(tmp_path / "b", ["model.arch=Unet"], {"test/hd95": 2.0, "test/dice": 0.8})
    md = write_tables(tmp_path, ["test/hd95", "test/dice"])[0].read_text()
    assert "| arch=FPN | 3.000 | - | - | **0.900** |" in md
    assert "| arch=Unet | **2.000** | - | - | 0.800 |" in md


def test_debug_runs_are_left_out_and_listed(tmp_path):
    fake_run(tmp_path / "a", ["model.arch=FPN"], {"test/dice": 0.9})
    fake_run(tmp_path / "b", ["model.arch=Unet"], {"test/dice": 0.8})
    fake_run(
        tmp_path / "c",
        ["model.arch=Unet", "debug=fdr"],
        {"test/dice": 0.1},
        choices={"debug": "fdr"},
    )
    md = write_tables(tmp_path, ["test/dice"])[0].read_text()
    assert "| arch=Unet | 0.800 |" in md and "debug=fdr" not in md.split("\n\n")[0]
    assert "- Debug runs left out (1; include_debug=true keeps them):\n  - c (debug=fdr)" in md
    md = write_tables(tmp_path, ["test/dice"], include_debug=True)[0].read_text()
    assert "| debug=fdr, arch=Unet | 0.100 |" in md
    with pytest.raises(LightsegError, match=r"Every run under .* is a debug run"):
        write_tables(tmp_path / "c")


def test_labels_are_short_unless_an_alias_is_given(tmp_path):
    keys = ["model.arch", "optimizer.lr", "model.head.name", "data.head.name"]
    assert short_names(keys, {}) == {
        "model.arch": "arch",
        "optimizer.lr": "lr",
        "model.head.name": "model.head.name",
        "data.head.name": "data.head.name",
    }
    assert short_names(keys, {"optimizer.lr": "LR"})["optimizer.lr"] == "LR"
    fake_run(tmp_path / "a", ["model.arch=FPN"], {"test/dice": 0.9})
    fake_run(tmp_path / "b", ["model.arch=Unet"], {"test/dice": 0.8})
    run_app(main, f"runs={tmp_path}", "columns=[test/dice]", "labels={model.arch:network}")
    assert "| network=FPN | **0.900** |" in (tmp_path / "results.md").read_text()
    run_app(main, f"runs={tmp_path}", "columns=test/dice", "labels={model.arch:''}")
    assert "| FPN | **0.900** |" in (tmp_path / "results.md").read_text()


def test_the_command_line_gives_hydras_errors_and_names_what_is_missing(tmp_path, capsys):
    fake_run(tmp_path / "a", ["model.arch=FPN"], {"test/dice": 0.9})
    with pytest.raises(SystemExit) as stopped:
        run_app(main, f"runs={tmp_path}", "label={model.arch:network}")  # labels
    assert stopped.value.code == 1
    assert "Could not override 'label'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        run_app(main, "columns=[test/dice]")
    assert stopped.value.code == 1
    assert "The config value runs is required but not set" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        run_app(main, f"runs={tmp_path}", "digits=two")
    assert stopped.value.code == 1
    assert "digits=two is not a whole number: set digits=<a whole number>." in " ".join(
        capsys.readouterr().err.split()
    )
    assert not (tmp_path / "results.md").exists()


def test_eval_flag_reads_each_runs_newest_evaluation(tmp_path):
    for name, arch, (plain, tta) in (("a", "FPN", (0.70, 0.75)), ("b", "Unet", (0.60, 0.65))):
        run = tmp_path / name
        fake_run(run, [f"model.arch={arch}"], {"test/dice": 0.5})
        for stamp, shift in (("2024-01-01_00-00-00", -0.5), ("2024-06-01_00-00-00", 0.0)):
            folder = run / "eval" / f"test_{stamp}"
            folder.mkdir(parents=True)
            report = {
                "split": "test",
                "metrics": {"plain": {"dice": plain + shift}, "tta": {"dice": tta + shift}},
                "examples_from": "tta",
            }
            (folder / "eval.json").write_text(json.dumps(report))
            with (folder / "per_image.csv").open("w") as file:
                file.write("id,variant,dice\n")
                file.writelines(f"img{i},plain,{plain + shift}\n" for i in range(3))
                file.writelines(f"img{i},tta,{tta + shift + i / 100}\n" for i in range(3))
    table = results(tmp_path, ["test/dice"], numbers_from=NumbersFrom(eval=True))
    assert table.cells["test/dice", "arch=FPN"].runs == [0.75]  # newest eval, its last variant
    assert table.cells["test/dice", "arch=FPN"].image_mean == pytest.approx(0.76)
    assert "make eval (test split, its last variant)" in table.caption
    plain = results(tmp_path, ["test/dice"], numbers_from=NumbersFrom(eval=True, variant="plain"))
    assert plain.cells["test/dice", "arch=Unet"].runs == [0.60]
    # 3 images, all worse: the exact two-sided p is 2 / 2**3
    assert plain.cells["test/dice", "arch=Unet"].p == pytest.approx(0.25)
    missing = results(tmp_path, ["test/dice"], numbers_from=NumbersFrom(eval=True, split="val"))
    assert all(not cell.runs for cell in missing.cells.values())
    assert any("no eval/val_*/eval.json (make eval CKPT=" in note for note in missing.notes)


def per_image_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def expected_image_columns(values: dict[str, list[float]], best: dict[str, list[float]]):
    """The per-image text and p (MDD) a row should show under test=wilcoxon, computed here from
    the CSV files."""
    mean = {i: statistics.fmean(v) for i, v in values.items()}
    low, high = stats.bootstrap(
        (np.array(list(mean.values())),),
        np.mean,
        n_resamples=10_000,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    text = f"{statistics.fmean(mean.values()):.3f} [{low:.3f}, {high:.3f}]"
    if values is best:
        return f"**{text}**", "best"
    base = [statistics.fmean(best[i]) for i in mean]
    differences = np.array(list(mean.values())) - np.array(base)
    p = 1.0 if not differences.any() else stats.wilcoxon(differences).pvalue
    mdd = (1.959964 + 0.841621) * np.std(differences, ddof=1) / math.sqrt(len(differences))
    return text, ("<0.001" if p < 0.001 else f"{p:.3f}") + f" ({mdd:.3f})"


def test_demo_multirun_turns_into_tables(one_thread, monkeypatch, tmp_path, data_dir):
    # as in: make train EXP=demo ARGS="-m seed=0,1 model.arch=Unet,FPN ..."
    run_cli(monkeypatch, "-m", *tiny_cli_run(tmp_path, data_dir), "seed=0,1", "model.arch=Unet,FPN")
    (sweep,) = (tmp_path / "logs" / "demo" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    dice, per_image = {}, {}
    for job in jobs:
        overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        arch = next(o.split("=")[1] for o in overrides if o.startswith("model.arch="))
        metrics = json.loads((job / "metrics.json").read_text())
        dice.setdefault(arch, []).append(metrics["test/dice"])
        for name in ("sensitivity", "specificity", "jaccard_thresholded", "dice_per_image"):
            assert 0.0 <= metrics[f"test/{name}"] <= 1.0
        assert 0.0 <= metrics["test/assd"] <= metrics["test/hd95"] <= math.hypot(64, 64)
        # the test stage's per_image.csv: the test split's images (one batch of 4), the same
        # values the run's test/* means were taken over
        rows = per_image_rows(job / "per_image.csv")
        test_ids = (job / "splits" / "test.txt").read_text().split()
        assert len(rows) == 4 and {r["id"] for r in rows} <= set(test_ids)
        for name in ("dice_per_image", "jaccard_thresholded", "hd95", "assd"):
            mean = statistics.fmean(float(r[name]) for r in rows)
            assert mean == pytest.approx(metrics[f"test/{name}"], abs=1e-5)
        # the failure share (configs/train.yaml: failure.dice=0.5): a column, and its mean logged
        failed = [float(float(r["dice"]) < 0.5) for r in rows if r["dice"]]
        assert [float(r["failure_rate/dice_below_0.5"]) for r in rows if r["dice"]] == failed
        assert metrics["test/failure_rate/dice_below_0.5"] == pytest.approx(
            statistics.fmean(failed)
        )
        for row in rows:
            per_image.setdefault(arch, {}).setdefault(row["id"], []).append(float(row["dice"]))
    assert {arch: len(values) for arch, values in dice.items()} == {"Unet": 2, "FPN": 2}

    md, tex = write_tables(sweep, ["test/dice"], test="wilcoxon")

    # best: the per-image mean (over images of each image's mean over the seeds)
    means = {
        a: statistics.fmean(statistics.fmean(v) for v in i.values()) for a, i in per_image.items()
    }
    best = max(means, key=means.get)
    for arch, values in dice.items():
        text = f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
        images, p = expected_image_columns(per_image[arch], per_image[best])
        assert f"| arch={arch} | {text} | {images} | {p} | 2 |" in md.read_text()
    assert tex.read_text().count(r"$\pm$") == 2 + 1 + 1  # two rows, the header, the caption
    # each test image's stratum: the demo's diagnosis, which follows the lesion's size
    strata = {r["id"]: r["stratum"] for job in jobs for r in per_image_rows(job / "per_image.csv")}
    assert set(strata.values()) <= {"common_nevus", "atypical_nevus", "melanoma"}
    table = results(sweep, ["test/dice"], by="stratum", resamples=200)
    assert [part.title.split(" (")[0] for part in table.slices] == [
        f"stratum = {name}" for name in sorted(set(strata.values()))
    ]
    assert all("fewer than min_images=10" in part.title for part in table.slices)  # 4 images

    # make eval on each run (native resolution), then the table of those evaluations
    for job in jobs:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("eval", [f"ckpt_path={job / 'checkpoints' / 'best.ckpt'}"])
        evaluate(cfg, data_from_run=True)
        (folder,) = (job / "eval").iterdir()
        rows = per_image_rows(folder / "per_image.csv")
        assert {r["id"] for r in rows} == set((job / "splits" / "test.txt").read_text().split())
        assert all(r["stratum"] == strata[r["id"]] for r in rows if r["id"] in strata)
    md, _ = write_tables(sweep, ["test/dice", "test/hd95"], numbers_from=NumbersFrom(eval=True))
    assert "From eval.json and per_image.csv of make eval (test split" in md.read_text()
    assert md.read_text().count(" | best | ") == 2  # one reference row per metric


def test_several_runs_per_row_get_the_two_level_bootstrap(tmp_path):
    paired_sweep(tmp_path)  # two seeds per row: auto picks the two-level bootstrap
    table = results(tmp_path, ["test/dice"], resamples=2000, seed=3)
    fpn, unet = (table.cells["test/dice", label] for label in ("arch=FPN", "arch=Unet"))
    rows = {row.label: row for row in table.rows}
    per_run = {
        label: [run.per_image["test/dice"] for run in sorted(row.runs, key=lambda r: r.folder)]
        for label, row in rows.items()
    }
    base = 0.6 + 0.02 * np.arange(15)
    assert fpn.value == pytest.approx(base.mean())  # the mean over runs of each run's mean
    assert unet.value == pytest.approx(base.mean() - sum(DIFFERENCES) / 15000)
    assert fpn.ci == two_level_ci(per_run["arch=FPN"], 2000, 3)
    # seeds 0 and 1 in both rows: the runs pair
    p = two_level_p(per_run["arch=Unet"], per_run["arch=FPN"], True, 2000, 3)
    assert unet.p == p and 0.01 < p < 0.1  # Wilcoxon's is 0.041
    # MDD: images (sd of DIFFERENCES / 1000 over 15) plus the paired run-mean differences
    # (-0.005 and +0.005 from the seeds' offsets, variance 5e-5, over 2 runs)
    se = math.sqrt(np.var(DIFFERENCES, ddof=1) / 1e6 / 15 + 5e-5 / 2)
    assert unet.mdd == pytest.approx((1.959964 + 0.841621) * se, rel=1e-6)
    assert fpn.bold and not unet.bold and fpn.p_text == "best"
    md = write_tables(tmp_path, ["test/dice"], resamples=2000, seed=3)[0].read_text()
    assert "p: two-level bootstrap over 2 runs x 15 images, two-sided" in md
    assert "Wilcoxon" not in md
    assert f"| {p:.3f} ({unet.mdd:.3f}) | 2 |" in md
    wilcoxon = results(tmp_path, ["test/dice"], resamples=2000, seed=3, test="wilcoxon")
    assert wilcoxon.cells["test/dice", "arch=Unet"].p == pytest.approx(DOCUMENTED_P)
    with pytest.raises(LightsegError, match="test=ttest is not a test of make table"):
        results(tmp_path, ["test/dice"], test="ttest")


def test_best_is_the_per_image_statistic_and_small_differences_are_called_unresolved(tmp_path):
    # metrics.json (pooled Dice) favours Unet; the per-image mean that the CI and p are about
    # favours FPN: FPN is bold, on its per-image value
    rng = np.random.default_rng(0)
    fpn = rng.uniform(0.7, 0.9, 12)
    unet = fpn - 0.002 + rng.normal(0, 0.02, 12)
    fake_run(
        tmp_path / "a", ["model.arch=FPN"], {"test/dice": 0.8}, per_image={"dice": images(fpn)}
    )
    fake_run(
        tmp_path / "b", ["model.arch=Unet"], {"test/dice": 0.9}, per_image={"dice": images(unet)}
    )
    table = results(tmp_path, ["test/dice"])
    cell = table.cells["test/dice", "arch=Unet"]
    assert table.cells["test/dice", "arch=FPN"].bold and not cell.bold
    assert cell.p > 0.05 and abs(cell.difference) < cell.mdd
    md = write_tables(tmp_path, ["test/dice"])[0].read_text()
    assert f"| arch=FPN | 0.800 | **{fpn.mean():.3f} [" in md
    assert (
        "- test/dice: the test set cannot resolve this difference from the best row (arch=FPN): "
        f"not significant, and smaller than the minimal detectable difference: arch=Unet "
        f"({cell.difference:+.3f}, MDD {cell.mdd:.3f})." in md
    )


def stratified_sweep(root: Path, stratum_column: bool = True) -> dict[str, list[str]]:
    """FPN and Unet, two seeds each, 30 images of strata big (16), small (12), tiny (2): Unet
    loses 0.1 on small lesions only; and a 0/1 failure column. Returns the ids per stratum."""
    strata = ["big"] * 16 + ["small"] * 12 + ["tiny"] * 2
    ids = [f"img{i:02d}" for i in range(30)]
    rng = np.random.default_rng(0)
    base = rng.uniform(0.7, 0.9, 30)
    for number, (arch, seed) in enumerate([("FPN", 0), ("FPN", 1), ("Unet", 0), ("Unet", 1)]):
        dice = base + rng.normal(0, 0.01, 30)
        if arch == "Unet":
            dice -= 0.1 * np.array([s == "small" for s in strata])
        columns = {"dice": dict(zip(ids, dice, strict=True))}
        columns["failure_rate/dice_below_0.75"] = dict(zip(ids, (dice < 0.75) * 1.0, strict=True))
        if stratum_column:
            columns = {"stratum": dict(zip(ids, strata, strict=True)), **columns}
        fake_run(
            root / str(number),
            [f"model.arch={arch}", f"seed={seed}"],
            {"test/dice": float(dice.mean()), "test/failure_rate/dice_below_0.75": 0.0},
            per_image=columns,
        )
    return {name: [i for i, s in zip(ids, strata, strict=True) if s == name] for name in strata}


def test_by_stratum_gives_a_table_per_slice_with_small_slices_flagged(tmp_path):
    members = stratified_sweep(tmp_path)
    failure = "test/failure_rate/dice_below_0.75"
    table = results(tmp_path, ["test/dice", failure], resamples=1000, by="stratum")
    assert [part.title for part in table.slices] == [
        "stratum = big (16 test images)",
        "stratum = small (12 test images)",
        "stratum = tiny (2 test images): fewer than min_images=10, too few to read",
    ]
    big, small, _ = table.slices
    run = next(r for row in small.rows for r in row.runs if r.folder.name == "2")
    assert set(run.per_image["test/dice"]) == set(members["small"])
    assert run.metrics["test/dice"] == pytest.approx(
        np.mean(list(run.per_image["test/dice"].values()))
    )
    # Unet is worse on small lesions only: there the two-level test sees it, on big ones not
    assert small.cells["test/dice", "arch=Unet"].p < 0.01
    assert big.cells["test/dice", "arch=Unet"].p > 0.05
    assert small.cells["test/dice", "arch=Unet"].difference == pytest.approx(-0.1, abs=0.01)
    # the failure share: a per-image 0/1 column with its CI, lowest best (Unet fails more)
    share = table.cells[failure, "arch=FPN"]
    flags = [r.per_image[failure] for r in table.rows[0].runs]
    assert share.value == pytest.approx(np.mean([np.mean(list(f.values())) for f in flags]))
    assert share.ci[0] <= share.value <= share.ci[1] and share.ci[0] < share.ci[1]
    assert share.bold and table.cells[failure, "arch=Unet"].p_text != "best"

    md = write_tables(tmp_path, ["test/dice"], resamples=1000, by="stratum", min_images=3)[0]
    text = md.read_text()
    assert "### stratum = small (12 test images)\n\n| Configuration | test/dice |" in text
    assert "### stratum = tiny (2 test images): fewer than min_images=3, too few to read" in text
    assert "Test images of stratum small only." in text
    assert text.count(r"\caption{") == 0
    tex = (tmp_path / "results.tex").read_text()
    assert tex.count(r"\begin{table}") == 4
    assert r"\caption{stratum = big (16 test images). Test images of stratum big only." in tex


def test_by_stratum_on_the_command_line_and_old_per_image_files(tmp_path):
    stratified_sweep(tmp_path / "new")
    printed = subprocess.run(  # under `make test`, make also prints "Entering directory" lines
        ["make", "-n", "table", f"RUNS={tmp_path / 'new'}", "ARGS=--by stratum", "PY=python"],
        cwd=Path(__file__).parents[1],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    (command,) = [line for line in printed if " -m lightseg.tools.table " in line]
    arguments = shlex.split(command)[3:]  # python -m lightseg.tools.table ...
    assert arguments == [f"runs={tmp_path / 'new'}", "columns=[test/dice,test/iou]", "by=stratum"]
    run_app(main, arguments[0], "columns=[test/dice]", *arguments[2:], "resamples=200")
    assert "### stratum = tiny" in (tmp_path / "new" / "results.md").read_text()

    stratified_sweep(tmp_path / "old", stratum_column=False)
    with pytest.raises(LightsegError) as raised:
        results(tmp_path / "old", ["test/dice"], by="stratum")
    message = str(raised.value)
    assert "per_image.csv' of run '" in message and "has no 'stratum' column" in message
    assert "make eval CKPT=" in message and 'ARGS="eval=true --by stratum"' in message
    assert "\n" not in message
    with pytest.raises(LightsegError, match="by=diagnosis is not a way to slice"):
        results(tmp_path / "new", ["test/dice"], by="diagnosis")


def test_eval_numbers_reach_the_table_with_the_right_direction(tmp_path):
    folder = tmp_path / "run" / "eval" / "test_2026-01-01_00-00-00"
    folder.mkdir(parents=True)
    report = {
        "metrics": {"plain": {"dice": 0.5, "ece": 0.2}, "tta": {"dice": 0.6, "ece": 0.1}},
        "examples_from": "tta",
        "coverage": {"plain": {"area": 0.55}, "tta": {"area": 0.7}},
    }
    (folder / "eval.json").write_text(json.dumps(report))
    values, _, variant = eval_results(RunFolder(tmp_path / "run"), NumbersFrom(eval=True))
    assert variant == "tta"
    assert values == {"test/dice": 0.6, "test/ece": 0.1, "test/coverage_area": 0.7}
    # calibration errors are best when lowest; Dice and the coverage area when highest
    assert lower_is_better("test/ece", []) and lower_is_better("test/brier", [])
    assert not lower_is_better("test/dice", []) and not lower_is_better("test/coverage_area", [])

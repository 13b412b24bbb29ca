"""The protocol card on every result (metrics.json, eval.json), eval's split=all, and make table
pairing only rows scored alike: the issue's reversal (two runs evaluated with different
inference) and rows scored at different resolutions are refused with the reason."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from lightseg import CONFIG_DIR
from lightseg.runs.protocol import comparison, differences
from lightseg.tools.eval import evaluate
from lightseg.tools.results import NumbersFrom
from lightseg.tools.table import results
from tests.conftest import PH2_CASES
from tests.runs import run_cli, tiny_cli_run
from tests.test_results import fake_run, images


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_eval(checkpoint: Path, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(
            "eval", [f"ckpt_path={checkpoint}", "wandb=false", "num_examples=0", *overrides]
        )
    return evaluate(cfg, data_from_run=True)


def test_the_card_of_training_and_of_eval_split_all(one_thread, demo_run, demo_checkpoint):
    card = json.loads((demo_run / "metrics.json").read_text())["protocol"]
    lists = {s: (demo_run / "splits" / f"{s}.txt").read_text() for s in ("train", "val", "test")}
    assert card["split"] == {
        "kind": "stratified random (seed 0)",
        "scored": "test",
        "hashes": {s: sha(text) for s, text in lists.items()},
    }
    assert card["dataset"]["name"] == "Demo" and card["dataset"]["images"] == 16
    assert card["scoring"]["resolution"] == "training size 64x64"
    definitions = card["scoring"]["metrics"]
    assert definitions["dice"] == "Dice(): pooled over the split"
    assert (
        definitions["jaccard_thresholded"] == "JaccardThresholded(threshold=0.65): mean over images"
    )
    assert card["inference"] == {
        "mode": "whole",
        "image_size": [64, 64],
        "stride": None,
        "flip": False,
        "scales": [1.0],
        "window_weights": None,
        "temperature": 1.0,
        "crf": None,
        "members": 1,
    }
    assert card["pretrained"] == {
        "arch": "Unet",
        "encoder_name": "resnet18",
        "encoder_weights": None,
        "encoder_weights_file": None,
        "from_pretrained": None,
    }
    # 10 training images, batch 8 (the last, partial batch dropped): one step per epoch
    assert card["budget"] == {"epochs": 2, "steps": 2, "images_seen": 16}

    report = run_eval(demo_checkpoint, "split=all", f"output_dir={demo_run / 'eval' / 'all_x'}")
    ids = sorted(i for text in lists.values() for i in text.split())
    assert report["images"] == len(ids) == 16  # every image of the dataset
    with (Path(report["output_dir"]) / "per_image.csv").open() as file:
        assert sorted(row["id"] for row in csv.DictReader(file)) == ids
    scored = report["protocol"]
    assert scored["split"]["kind"] == "all" and scored["split"]["scored"] == "all"
    assert scored["split"]["hashes"]["all"] == sha("".join(f"{i}\n" for i in ids))
    assert scored["split"]["hashes"]["test"] == card["split"]["hashes"]["test"]
    assert scored["dataset"] == card["dataset"] and scored["budget"] == card["budget"]
    assert scored["scoring"]["resolution"] == "native"
    # the test stage's numbers and eval's are never paired: other resolution (and images)
    train, native = comparison(card, "test/dice"), comparison(scored, "all/dice")
    assert differences(train, native) == "different test images: split hashes differ"
    native["images"] = train["images"]
    assert differences(train, native) == (
        "scored at different resolutions: training size 64x64 vs native"
    )


def test_all_of_another_dataset_is_external(one_thread, demo_checkpoint, data_dir, tmp_path):
    # train on one dataset (the demo), test on every image of another (the PH2 fixture)
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        given = [f"ckpt_path={demo_checkpoint}", "data=ph2", f"paths.data_dir={data_dir}"]
        cfg = compose("eval", [*given, "split=all", "wandb=false", "num_examples=0"])
    cfg.output_dir = str(tmp_path)
    card = evaluate(cfg, data_from_run=False)["protocol"]
    ids = "".join(f"{case}\n" for case in sorted(PH2_CASES))
    assert card["split"]["kind"] == "external: all" and card["dataset"]["name"] == "PH2"
    assert card["split"]["hashes"]["all"] == sha(ids) and card["dataset"]["images"] == 6


def test_rows_scored_differently_are_never_paired(one_thread, monkeypatch, tmp_path, data_dir):
    tiny = tiny_cli_run(tmp_path, data_dir)
    run_cli(monkeypatch, "-m", *tiny, "model.arch=Unet,FPN")
    at_96 = [o for o in tiny if not o.startswith("data.image_size")] + ["data.image_size=[96,96]"]
    run_cli(monkeypatch, *at_96, "model.arch=Unet")
    logs = tmp_path / "logs" / "demo"

    # the test stage: the 96 px run is scored at its own training size, so it pairs with neither
    table = results(logs, ["test/dice"], test="wilcoxon")
    labels = sorted(row.label for row in table.rows)
    low, high = [f"image_size=[64, 64], arch={a}" for a in ("FPN", "Unet")], labels[-1]
    assert labels == [*low, "image_size=[96, 96], arch=Unet"]
    assert (
        table.cells["test/dice", high].p_text == "n/a" and not table.cells["test/dice", high].bold
    )
    assert sorted(table.cells["test/dice", label].p_text == "best" for label in low) == [0, 1]
    assert (
        f"test/dice: not paired: {high} with {low[0]}, {low[1]}: scored at different "
        "resolutions: training size 96x96 vs training size 64x64." in table.notes
    )
    assert "Protocols (rows are paired" in table.caption and "training size 96x96" in table.caption

    # the reversal: one run evaluated with flip TTA, the other without
    (sweep,) = (logs / "multiruns").iterdir()
    arch = {
        yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())[-1]: job
        for job in (sweep / "0", sweep / "1")
    }
    run_eval(arch["model.arch=Unet"] / "checkpoints" / "best.ckpt", "inference.flip=true")
    run_eval(arch["model.arch=FPN"] / "checkpoints" / "best.ckpt")
    evaluated = results(sweep, ["test/dice"], numbers_from=NumbersFrom(eval=True))
    cells = [evaluated.cells["test/dice", f"arch={a}"] for a in ("FPN", "Unet")]
    assert [(c.p, c.p_text, c.bold) for c in cells] == [(None, "n/a", False)] * 2
    assert (
        "test/dice: not paired: arch=Unet with arch=FPN: different inference: whole 64x64, "
        "flip vs whole 64x64, no TTA." in evaluated.notes
    )
    # scored alike (both runs' plain variant), they pair
    alike = results(sweep, ["test/dice"], numbers_from=NumbersFrom(eval=True, variant="plain"))
    texts = sorted(alike.cells["test/dice", f"arch={a}"].p_text for a in ("FPN", "Unet"))
    assert (
        texts[1] == "best"
        and texts[0][0].isdigit()
        and not any("not paired" in n for n in alike.notes)
    )
    digest = sha((sweep / "0" / "splits" / "test.txt").read_text())
    assert (
        f"Protocol of every row: Demo test split, stratified random (seed 0), ids {digest}, "
        "scored at native resolution, whole 64x64, no TTA." in alike.caption
    )


def test_published_rows_are_shown_never_paired_and_old_runs_tabulate(tmp_path):
    for number, arch in enumerate(("FPN", "Unet")):  # folders written before protocol cards
        fake_run(
            tmp_path / "runs" / str(number),
            [f"model.arch={arch}"],
            {"test/dice": 0.8 + number / 100},
            per_image={"dice": images([0.7, 0.8, 0.9 + number / 100])},
        )
    published = tmp_path / "published.yaml"
    entry = {
        "name": "Smith 2020",
        "source": "Smith et al., MIDL 2020, Table 2",
        "metrics": {"test/dice": 0.95},
        "protocol": {"split": {"kind": "official", "scored": "test"}},
    }
    published.write_text(yaml.safe_dump([entry]))
    table = results(tmp_path / "runs", ["test/dice"], published=published)
    cell = table.cells["test/dice", "Smith 2020 (published)"]
    assert (cell.runs, cell.p_text, cell.bold, cell.value) == ([0.95], "published", False, None)
    assert table.cells["test/dice", "arch=Unet"].p_text == "best"  # the runs pair as before
    assert "Protocol of every row: unknown (no protocol card)." in table.caption
    assert (
        "Smith 2020 (published): from Smith et al., MIDL 2020, Table 2, test split, official; "
        "shown, never paired." in table.caption
    )
    published.write_text(yaml.safe_dump([{"name": "x", "metrics": {"test/dice": 1}}]))
    with pytest.raises(Exception, match="lacks a name, a source or its metrics"):
        results(tmp_path / "runs", ["test/dice"], published=published)


def test_split_kind_names_lists_official_subsets_folds_and_random():
    from types import SimpleNamespace as NS

    from lightseg.data.source import Sample
    from lightseg.runs.protocol import split_kind

    fixed = {"test": [Sample(id="a", image=Path("a.png"), subset="test")]}
    free = {"test": [Sample(id="a", image=Path("a.png"))]}
    split = NS(folds=0, fold=0, seed=3)

    def kind(lists, splits, split=split):
        return split_kind(NS(split=split, splits=splits, source=NS(split_lists=lists)))

    assert kind("lists", fixed) == "lists"  # PH2 / MADS / folder with data.source.split_lists
    assert kind(None, fixed) == "official"  # VOC, COCO: the dataset's own subsets
    assert kind(None, free) == "stratified random (seed 3)"
    assert kind(None, free, NS(folds=5, fold=1, seed=0)) == "k-fold 2 of 5 (seed 0)"

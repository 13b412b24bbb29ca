"""k-fold cross-validation: stratified test folds covering the data once, a table over them."""

from __future__ import annotations

import json
import statistics
from collections import Counter

import pytest
import yaml
from hydra.utils import instantiate

from lightseg.data.source import kfold_split
from lightseg.errors import LightsegError
from lightseg.tools.table import write_tables
from tests.conftest import make_config
from tests.runs import run_cli, tiny_cli_run
from tests.test_data_base import samples

PH2_DIAGNOSES = {"common": 80, "atypical": 80, "melanoma": 40}


def test_test_folds_are_stratified_disjoint_and_cover_every_sample_once():
    data = samples(PH2_DIAGNOSES)
    folds = [kfold_split(data, 5, fold, val=0.2, seed=0) for fold in range(5)]
    tested = [s.id for split in folds for s in split["test"]]
    assert sorted(tested) == sorted(s.id for s in data)  # each sample tested exactly once
    for split in folds:
        # 200 cases / 5 folds; each diagnosis spread evenly: 16 + 16 + 8 per test fold
        assert Counter(s.stratum for s in split["test"]) == {
            "common": 16,
            "atypical": 16,
            "melanoma": 8,
        }
        # validation: 20% of all cases, stratified, from the four other folds
        assert Counter(s.stratum for s in split["val"]) == {
            "common": 16,
            "atypical": 16,
            "melanoma": 8,
        }
        groups = [{s.id for s in split[name]} for name in ("train", "val", "test")]
        assert sum(map(len, groups)) == 200 and len(set.union(*groups)) == 200


def test_folds_are_deterministic_given_the_split_seed_and_balanced_in_size():
    data = samples({"a": 7, "b": 4})  # 11 samples: fold sizes 3, 2, 2, 2, 2 in some order
    first = [kfold_split(data, 5, f, val=0.0, seed=1)["test"] for f in range(5)]
    assert [kfold_split(data[::-1], 5, f, val=0.0, seed=1)["test"] for f in range(5)] == first
    assert sorted(len(fold) for fold in first) == [2, 2, 2, 2, 3]
    other = [kfold_split(data, 5, f, val=0.0, seed=2)["test"] for f in range(5)]
    assert other != first  # the split seed matters


@pytest.mark.parametrize(
    ("folds", "fold", "val", "message"),
    [
        (1, 0, 0.2, r"data\.split\.folds=1 must be a whole number >= 2"),
        (5, 5, 0.2, r"data\.split\.fold=5 must be one of 0\.\.4 \(data\.split\.folds=5\)"),
        (5, -1, 0.2, r"data\.split\.fold=-1 must be one of 0\.\.4"),
        (20, 0, 0.2, r"data\.split\.folds=20 needs at least 20 samples; the dataset has 11"),
        (5, 0, 0.9, r"data\.split\.val=0\.9 with data\.split\.folds=5 leaves no training data"),
    ],
)
def test_bad_fold_settings_are_named(folds, fold, val, message):
    with pytest.raises(LightsegError, match=message):
        kfold_split(samples({"a": 7, "b": 4}), folds, fold, val, seed=0)


def test_ph2_layout_folds_through_the_config(tmp_path, ph2_root):
    def test_ids(fold: int) -> list[str]:
        cfg = make_config(
            tmp_path,
            "data=ph2",
            "data.split.folds=3",
            f"data.split.fold={fold}",
            "data.split.val=0.34",
            "data.split_dir=null",
            data_dir=ph2_root.parent,
        )
        splits = instantiate(cfg.data, _convert_="all").locate()
        assert {len(group) for group in splits.values()} == {2}
        # 2 cases per diagnosis dealt round-robin over 3 folds: no fold holds two of one
        assert len({s.stratum for s in splits["test"]}) == 2
        return [s.id for s in splits["test"]]

    tested = [case for fold in range(3) for case in test_ids(fold)]
    assert sorted(tested) == ["IMD002", "IMD003", "IMD009", "IMD016", "IMD058", "IMD061"]


def test_official_splits_refuse_folds(tmp_path, data_dir):
    cfg = make_config(
        tmp_path, "data=voc", "data.split.folds=5", "data.split_dir=null", data_dir=data_dir
    )
    with pytest.raises(LightsegError, match=r"VOC comes with fixed splits \(train, val\)"):
        instantiate(cfg.data, _convert_="all").locate()


def test_folds_at_the_wrong_level_point_to_data_split_folds(monkeypatch, capsys, tmp_path):
    with pytest.raises(SystemExit):
        run_cli(monkeypatch, "data=voc", "data.folds=5", f"paths.log_dir={tmp_path}")
    err = capsys.readouterr().err
    assert "Did you mean 'data.split.folds'?" in err and "data.std" not in err


def test_five_fold_multirun_on_the_demo_gives_a_table_over_folds(
    one_thread, monkeypatch, tmp_path, data_dir
):
    # as in: make train EXP=demo ARGS="-m data.split.folds=5 data.split.fold=0,1,2,3,4"
    overrides = ["-m", *tiny_cli_run(tmp_path, data_dir), "data.split.folds=5"]
    overrides.append("data.split.fold=0,1,2,3,4")
    run_cli(monkeypatch, *overrides)
    (sweep,) = (tmp_path / "logs" / "demo" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 5
    tested, dice = [], []
    for job in jobs:
        assert "data.split.fold=" in " ".join(
            yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        )
        tested += (job / "splits" / "test.txt").read_text().split()
        dice.append(json.loads((job / "metrics.json").read_text())["test/dice"])
    assert sorted(tested) == [f"IMD{i:03d}" for i in range(1, 21)]  # 20 demo cases, once each

    md, _ = write_tables(sweep, ["test/dice"])

    text = f"{statistics.fmean(dice):.3f} ± {statistics.stdev(dice):.3f}"
    (row,) = [line for line in md.read_text().splitlines() if line.startswith("| demo |")]
    # one row, 5 folds; best in bold: the per-image column, what the CI and p are about
    assert row.startswith(f"| demo | {text} | **") and row.endswith("| 5 |")

"""Leakage guards: duplicates listed by make data, group-aware splits, the one-line warning,
and split lists for every dataset."""

from __future__ import annotations

import csv
import logging
import shutil
from collections import Counter
from pathlib import Path

import imagehash
import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from lightseg.data.demo import synthetic_case
from lightseg.data.download import main
from lightseg.data.folder import Folder
from lightseg.data.leakage import NEAR, cache_file, hashes, with_groups
from lightseg.data.source import Sample, kfold_split, stratified_split
from lightseg.errors import LightsegError
from tests.conftest import ONE_STEP, make_config
from tests.fixtures_datasets import write_folder, write_mads
from tests.runs import run_app

#: The planted copies: (copy, original), as make data must pair them (ids sorted).
PLANTED = {("case_001", "copy_001"), ("bright_002", "case_002"), ("crop_a", "scene_a")}
CLUSTERS = [{"case_001", "copy_001"}, {"bright_002", "case_002"}, {"crop_a", "scene_a"}]
LISTS = {  # every planted pair across a border
    "train": ["case_001", "case_002", "scene_a", "case_003", "case_004", "case_005", "case_006"],
    "val": ["case_007", "case_008", "crop_a"],
    "test": ["copy_001", "bright_002", "case_009", "case_010"],
}


def phash(path: Path) -> imagehash.ImageHash:
    return imagehash.phash(Image.open(path).convert("L"))


@pytest.fixture
def planted(tmp_path) -> Path:
    """The folder fixture (random-noise photos) plus a byte copy, a brightened PNG copy and a
    smooth scene with a copy cropped by 3-4 pixels a side."""
    root = write_folder(tmp_path / "photos")
    images, masks = root / "images", root / "masks"
    shutil.copy(images / "case_001.jpg", images / "copy_001.jpg")
    shutil.copy(masks / "case_001.png", masks / "copy_001.png")
    bright = np.asarray(Image.open(images / "case_002.jpg")).astype(int) + 20
    Image.fromarray(np.clip(bright, 0, 255).astype(np.uint8)).save(images / "bright_002.png")
    shutil.copy(masks / "case_002.png", masks / "bright_002.png")
    image, mask = synthetic_case(np.random.default_rng(5))
    Image.fromarray(image).save(images / "scene_a.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(masks / "scene_a.png")
    crop = (slice(3, -4), slice(4, -3))
    Image.fromarray(image[crop]).save(images / "crop_a.png")
    Image.fromarray(mask[crop].astype(np.uint8) * 255).save(masks / "crop_a.png")
    return root


def write_lists(folder: Path, lists: dict[str, list[str]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, ids in lists.items():
        (folder / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return folder


def datamodule(tmp_path: Path, *overrides: str):
    cfg = make_config(tmp_path, "data.split_dir=null", *overrides)
    return instantiate(cfg.data, _convert_="all")


def split_of(splits) -> dict[str, str]:
    return {s.id: name for name, group in splits.items() for s in group}


def test_make_data_lists_exact_and_near_duplicates_across_splits(planted, capsys, cache_dir):
    write_lists(planted / "splits", LISTS)
    run_app(main, "data=folder", f"data.source.root={planted}")
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "1 exact and 2 near-duplicate pair(s), 3 across splits" in out
    distance = {  # the library's own distances between the files
        pair: phash(next((planted / "images").glob(f"{pair[0]}.*")))
        - phash(next((planted / "images").glob(f"{pair[1]}.*")))
        for pair in PLANTED
    }
    assert distance[("case_001", "copy_001")] == 0
    assert 0 < distance[("crop_a", "scene_a")] <= NEAR
    assert "│ exact │ case_001 │ train │ copy_001 │ test │" in out
    bits = distance[("bright_002", "case_002")]
    assert f"│ near ({bits} bits) │ bright_002 │ test │ case_002 │ train │" in out
    bits = distance[("crop_a", "scene_a")]
    assert f"│ near ({bits} bits) │ crop_a │ val │ scene_a │ train │" in out
    source = Folder(planted)
    with open(cache_file(source, cache_dir).with_suffix(".pairs.csv"), newline="") as stream:
        rows = list(csv.reader(stream))[1:]
    assert {(a, b) for a, _, b, _, _ in rows} == PLANTED  # and no pair of distinct photos


def test_make_data_without_duplicates_says_so(tmp_path, capsys):
    root = write_folder(tmp_path / "photos")
    run_app(main, "data=folder", f"data.source.root={root}")
    out = " ".join(capsys.readouterr().out.split())
    assert "No duplicate images: no two of the 10 images are identical or near-duplicates" in out


def test_group_by_duplicates_keeps_clusters_in_one_split(planted, tmp_path):
    base = ("data=folder", f"data.source.root={planted}")
    separated = 0
    for seed in range(6):
        split = f"data.split.seed={seed}"
        plain = split_of(datamodule(tmp_path, *base, split).locate())
        separated += any(len({plain[i] for i in cluster}) > 1 for cluster in CLUSTERS)
        grouped = split_of(
            datamodule(tmp_path, *base, split, "data.split.group_by=duplicates").locate()
        )
        assert all(len({grouped[i] for i in cluster}) == 1 for cluster in CLUSTERS)
        for fold in range(3):
            folds = ("data.split.folds=3", f"data.split.fold={fold}", "data.split.val=0.2")
            kfold = datamodule(tmp_path, *base, split, *folds, "data.split.group_by=duplicates")
            assigned = split_of(kfold.locate())
            assert all(len({assigned[i] for i in cluster}) == 1 for cluster in CLUSTERS)
    assert separated  # without group_by some seed splits a cluster: the test can fail


def grouped_samples(sizes: dict[str, int], per_group: int = 4) -> list[Sample]:
    """``sizes[stratum]`` groups of ``per_group`` samples each."""
    return [
        Sample(f"{stratum}{g}_{i}", Path("x"), stratum=stratum, group=f"{stratum}{g}")
        for stratum, groups in sizes.items()
        for g in range(groups)
        for i in range(per_group)
    ]


def test_stratified_split_keeps_groups_whole_with_exact_sizes():
    data = grouped_samples({"a": 5, "b": 5})  # 40 samples, 10 groups of 4
    for seed in range(5):
        splits = stratified_split(data, {"val": 0.2, "test": 0.2}, seed)
        assert {k: len(v) for k, v in splits.items()} == {"train": 24, "val": 8, "test": 8}
        for name in ("val", "test"):  # a group of each stratum: 4 + 4
            assert Counter(s.stratum for s in splits[name]) == {"a": 4, "b": 4}
        owner, groups = split_of(splits), {s.group for s in data}
        assert all(len({owner[s.id] for s in data if s.group == g}) == 1 for g in groups)


def test_kfold_deals_whole_groups_and_tests_each_sample_once():
    data = grouped_samples({"a": 6, "b": 4})  # 10 groups of 4: 2 groups per fold
    tested = []
    for fold in range(5):
        splits = kfold_split(data, 5, fold, val=0.2, seed=1)
        assert len(splits["test"]) == 8 and len(splits["val"]) == 8
        owner = split_of(splits)
        groups = {s.group for s in data}
        assert all(len({owner[s.id] for s in data if s.group == g}) == 1 for g in groups)
        tested += [s.id for s in splits["test"]]
    assert sorted(tested) == sorted(s.id for s in data)


def test_mads_keeps_each_sequence_in_one_split_by_default(tmp_path):
    root = write_mads(tmp_path / "data" / "mads")
    module = datamodule(tmp_path, "data=mads", f"paths.data_dir={root.parent}")
    found = with_groups(module.source, module.source.find(), module.split.group_by, tmp_path)
    assert {s.id: s.group for s in found} == {
        "HipHop_HipHop4_C1_00810": "HipHop_HipHop4",
        "HipHop_HipHop4_C1_00820": "HipHop_HipHop4",
        "Jazz_Jazz1_C0_00000": "Jazz_Jazz1",
        "Jazz_Jazz1_C0_00010": "Jazz_Jazz1",
        "Kata_Kata2_C1_00300": "Kata_Kata2",
        "Kata_Kata2_C1_00310": "Kata_Kata2",
        "Sports_Badminton_C0_00100": "Sports_Badminton",
        "Taichi_Taichi_S1_C1_00020": "Taichi_Taichi_S1",
    }
    for seed in range(6):
        module = datamodule(
            tmp_path, "data=mads", f"paths.data_dir={root.parent}", f"data.split.seed={seed}"
        )
        owner = split_of(module.locate())
        for sequence in ("HipHop_HipHop4", "Jazz_Jazz1", "Kata_Kata2"):
            assert len({split for i, split in owner.items() if i.startswith(sequence)}) == 1


def test_group_by_a_csv_column_and_bad_settings(tmp_path):
    root = write_folder(tmp_path / "photos")
    rows = [f"images/case_{i:03d}.jpg,masks/case_{i:03d}.png,p{(i - 1) // 2}" for i in range(1, 11)]
    (root / "pairs.csv").write_text("image,mask,patient\n" + "\n".join(rows) + "\n")
    source = Folder(root, csv="pairs.csv")
    found = with_groups(source, source.find(), "patient", tmp_path)
    assert [s.group for s in found][:4] == ["p0", "p0", "p1", "p1"]
    with pytest.raises(LightsegError, match=r"group_by='\(' is not 'duplicates' nor one of the"):
        with_groups(source, source.find(), "(", tmp_path)
    with pytest.raises(LightsegError, match=r"matches none of the sample ids \(e.g. 'images/case"):
        with_groups(source, source.find(), "^video", tmp_path)


def test_training_warns_once_when_hashed_near_duplicates_cross_the_border(
    planted, tmp_path, caplog
):
    write_lists(planted / "splits", LISTS)
    base = ("data=folder", f"data.source.root={planted}")
    module = datamodule(tmp_path, *base)
    with caplog.at_level(logging.WARNING):
        module.prepare_data(), module.setup("fit"), module.setup("test")
    assert "near-duplicate" not in caplog.text  # not hashed yet: no check, no hashing
    assert hashes(module.source, module.source.find(), module.cache_dir, compute=False) is None

    hashes(module.source, module.source.find(), module.cache_dir)  # as make data does
    module = datamodule(tmp_path, *base)
    with caplog.at_level(logging.WARNING):
        module.prepare_data(), module.setup("fit"), module.setup("test")
    lines = [r.getMessage() for r in caplog.records if "near-duplicate" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith("3 near-duplicate image pair(s) cross the split border, e.g. ")


def test_ph2_takes_split_lists(ph2_root, tmp_path):
    lists = write_lists(
        tmp_path / "published",
        {"train": ["IMD002", "IMD003", "IMD009"], "val": ["IMD016"], "test": ["IMD058", "IMD061"]},
    )
    overrides = ("data=ph2", f"paths.data_dir={ph2_root.parent}")
    splits = datamodule(tmp_path, *overrides, f"data.source.split_lists={lists}").locate()
    assert {k: [s.id for s in v] for k, v in splits.items()} == {
        "train": ["IMD002", "IMD003", "IMD009"],
        "val": ["IMD016"],
        "test": ["IMD058", "IMD061"],
    }
    (lists / "test.txt").write_text("IMD058.bmp\nIMD999\n")
    with pytest.raises(LightsegError) as error:
        datamodule(tmp_path, *overrides, f"data.source.split_lists={lists}").locate()
    message = str(error.value)
    assert "test.txt' names samples that were not found: line 2: 'IMD999'" in message
    assert "sample ids PH2 finds under" in message and "'IMD002'" in message
    with pytest.raises(LightsegError, match=r"split_lists='nowhere': '.*nowhere' is not a folder"):
        datamodule(tmp_path, *overrides, "data.source.split_lists=nowhere").locate()


def test_a_training_run_warns_once(planted, tmp_path, caplog, one_thread):
    from lightseg.train import train

    write_lists(planted / "splits", LISTS)
    cfg = make_config(
        tmp_path, "data=folder", f"data.source.root={planted}", *ONE_STEP,
        "model=unet_resnet18", "data.image_size=32", "callbacks.progress_bar=null",
    )  # fmt: skip
    module = instantiate(cfg.data, _convert_="all")
    hashes(module.source, module.source.find(), module.cache_dir)  # as make data does
    with caplog.at_level(logging.WARNING):
        train(cfg)
    lines = [r.getMessage() for r in caplog.records if "near-duplicate" in r.getMessage()]
    assert len(lines) == 1, lines

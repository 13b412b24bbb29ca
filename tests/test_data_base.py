"""Shared data logic: splits, the unpadded evaluation sampler, config checks, the demo writer,
declared source settings and the locked prepare()."""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle
from collections import Counter
from pathlib import Path

import pytest
from hydra.utils import instantiate
from PIL import Image

from lightseg.data import Sample, SegmentationDataModule, SegmentationSource
from lightseg.data.demo import Demo
from lightseg.data.sampling import EvalDistributedSampler
from lightseg.data.source import fingerprint, stratified_split
from lightseg.errors import LightsegError
from tests.conftest import make_config
from tests.sources import CountingDemo, locate_slow_source


def samples(counts: dict[str, int]) -> list[Sample]:
    return [
        Sample(f"{stratum}{i:03d}", Path("x"), stratum=stratum)
        for stratum, n in counts.items()
        for i in range(n)
    ]


def test_split_sizes_are_exact_and_strata_proportional():
    data = samples({"common": 80, "atypical": 80, "melanoma": 40})  # PH2's diagnoses
    splits = stratified_split(data, {"val": 0.2, "test": 0.2}, seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 120, "val": 40, "test": 40}
    for group in ("val", "test"):
        assert Counter(s.stratum for s in splits[group]) == {
            "common": 16,
            "atypical": 16,
            "melanoma": 8,
        }
    ids = [s.id for group in splits.values() for s in group]
    assert sorted(ids) == sorted(s.id for s in data)  # a partition: nothing lost or repeated


def test_split_ignores_input_order_but_not_seed():
    data = samples({"a": 10, "b": 5})
    first = stratified_split(data, {"val": 0.2, "test": 0.2}, seed=1)
    assert stratified_split(data[::-1], {"val": 0.2, "test": 0.2}, seed=1) == first
    assert stratified_split(data, {"val": 0.2, "test": 0.2}, seed=2) != first


@pytest.mark.parametrize("fractions", [{"val": 0.6, "test": 0.5}, {"val": -0.1}])
def test_bad_split_fractions_are_rejected(fractions):
    with pytest.raises(LightsegError, match=r"data\.split fractions"):
        stratified_split(samples({"a": 10}), fractions, seed=0)


@pytest.mark.parametrize("size", [5, 6, 7])
def test_eval_sampler_covers_each_sample_exactly_once(size):
    dataset = list(range(size))
    shards = [list(EvalDistributedSampler(dataset, 2, rank)) for rank in (0, 1)]
    assert sorted(shards[0] + shards[1]) == dataset
    assert [len(EvalDistributedSampler(dataset, 2, r)) for r in (0, 1)] == [len(s) for s in shards]


@pytest.mark.parametrize(
    ("size", "height_width"), [(256, (256, 256)), ([96, 128], (96, 128)), ([64], (64, 64))]
)
def test_image_size_is_one_number_or_height_and_width(tmp_path, size, height_width):
    module = SegmentationDataModule(Demo(tmp_path), {"train": [], "eval": []}, image_size=size)
    assert module.image_size == height_width


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"image_size": [64, 64, 3]}, r"data.image_size=\[64, 64, 3\] is not an image size"),
        ({"image_size": 0}, "data.image_size=0 is not an image size"),
        ({"batch_size": 0}, "data.batch_size=0 must be a whole number >= 1"),
        ({"num_workers": -1}, "data.num_workers=-1 must be a whole number >= 0"),
        ({"mean": [0.5]}, "data.mean and data.std need one value per image channel"),
        ({"split": {"vla": 0.2}}, r"data\.split\.vla is not a setting: data\.split takes val, "),
        ({"cache": {"size": 2}}, r"data\.cache\.size is not a setting: .* enabled, scale, dir"),
        ({"cache": {"scale": 0}}, r"data\.cache\.scale=0 must be > 0"),
        ({"split": {"folds": 5, "fold": 5}}, r"data\.split\.fold=5 must be one of 0\.\.4"),
    ],
)
def test_bad_data_values_are_named(tmp_path, options, message):
    with pytest.raises(LightsegError, match=message):
        SegmentationDataModule(Demo(tmp_path), {"train": [], "eval": []}, **options)


def digest(root: Path) -> str:
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix == ".bmp")
    return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()


def test_demo_is_deterministic_in_ph2_format_with_odd_sizes(tmp_path):
    first, second = Demo(tmp_path / "a", num_cases=6), Demo(tmp_path / "b", num_cases=6)
    first.prepare()
    second.prepare()
    assert digest(first.root) == digest(second.root)
    found = first.find()  # through the real PH2 reader, xlsx included
    assert len(found) == 6 and {s.stratum for s in found} == {
        "common_nevus",
        "atypical_nevus",
        "melanoma",
    }
    for sample in found:
        image, mask = Image.open(sample.image), Image.open(sample.mask)
        assert image.mode == "RGB" and mask.mode == "1" and image.size == mask.size
        assert image.size[0] % 32 and image.size[1] % 32
    assert (first.root / "PH2 Dataset images/IMD001/IMD001_roi").is_dir()


def test_demo_regenerates_when_its_settings_change(tmp_path):
    Demo(tmp_path, num_cases=6).prepare()
    Demo(tmp_path, num_cases=4).prepare()
    assert len(Demo(tmp_path).find()) == 4


def test_the_split_depends_on_split_seed_not_on_the_runs_seed(tmp_path, data_dir):
    def test_ids(*overrides):
        cfg = make_config(tmp_path, "experiment=demo", "data.source.num_cases=20", *overrides)
        cfg.paths.data_dir = str(data_dir)
        datamodule = instantiate(cfg.data, _convert_="all")
        return [s.id for s in datamodule.locate()["test"]]

    assert test_ids("seed=1") == test_ids("seed=2")  # seeds of one study share a test set
    assert test_ids("seed=1") != test_ids("seed=1", "data.split.seed=5")  # varied on purpose


class Renamed(SegmentationSource):
    """Settings kept under other names, or only as what they decide."""

    def __init__(self, root, threshold: int = 128, mode: str = "a", **extra) -> None:
        super().__init__(root)
        self._cut, self.flipped = threshold, mode == "b"


def test_settings_are_the_constructor_arguments_whatever_a_source_stores(tmp_path):
    source = Renamed(tmp_path, threshold=100, colour="red")
    assert source.settings() == {
        "root": tmp_path,
        "threshold": 100,
        "mode": "a",
        "extra": {"colour": "red"},
    }
    assert pickle.loads(pickle.dumps(source)).settings() == source.settings()  # spawned workers
    assert SegmentationSource(tmp_path).settings() == {"root": tmp_path, "split_lists": None}
    variants = [{}, {"threshold": 100}, {"mode": "b"}, {"colour": "red"}, {"root": tmp_path / "x"}]
    keys = {fingerprint(Renamed(**{"root": tmp_path, **v}), []) for v in variants}
    assert len(keys) == len(variants)  # each setting keys the caches


def test_prepare_runs_once_per_process_before_find_holding_the_datasets_lock(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    spawn = multiprocessing.get_context("spawn")
    jobs = [spawn.Process(target=locate_slow_source, args=(str(data), str(cache))) for _ in "ab"]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
    assert [job.exitcode for job in jobs] == [0, 0]
    calls = [line.split() for line in (data / "calls.txt").read_text().splitlines()]
    prepares = [call for call in calls if call[0] != "find"]
    first, second = prepares[0][1], prepares[2][1]
    # one prepare at a time: the other process waited for the lock
    assert first != second and prepares == [
        ["begin", first],
        ["end", first],
        ["begin", second],
        ["end", second],
    ]
    for pid in (first, second):  # each process found its samples after its own prepare
        assert calls.index(["find", pid]) > calls.index(["end", pid])
    assert len(calls) == 6
    assert [p.name for p in data.iterdir()] == ["calls.txt"]  # no lock in the data folder
    assert len(list((cache / "locks").glob("data-*.lock"))) == 1


def test_one_process_prepares_once_however_often_it_asks_for_the_data(tmp_path):
    source = CountingDemo(tmp_path / "demo" / "PH2Dataset", num_cases=6)
    module = SegmentationDataModule(
        source, {"train": [], "eval": []}, cache={"dir": tmp_path / "cache"}, mean="auto"
    )
    module.prepare_data()
    module.setup("fit")
    module.locate()
    module.dataset("train")
    assert (tmp_path / "demo" / "prepare_calls.txt").read_text() == "prepare\n"

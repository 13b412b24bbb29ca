"""The preprocessed data cache: built once, reused, rebuilt when data, settings or size change,
shared, verified when opened, rebuilt when damaged."""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import multiprocessing
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from lightseg.data import Sample, SegmentationDataModule, SegmentationSource, cache
from lightseg.data.cache import INDEX, PIXELS, RECORD, open_cache, working_size
from lightseg.data.demo import Demo
from lightseg.data.folder import Folder
from lightseg.data.sampling import SeededAugmentation
from lightseg.data.source import fingerprint, read_pair
from lightseg.data.transforms import init_loader_worker
from lightseg.errors import LightsegError
from tests.runs import full_disk_open


def datamodule(tmp_path, transforms=(), scale=None, **kwargs) -> SegmentationDataModule:
    cache = {"enabled": True, "scale": scale, "dir": tmp_path / "cache"}
    kwargs = {"cache": cache, "num_workers": 0, **kwargs}
    pipelines = {"train": list(transforms), "eval": list(transforms)}
    return SegmentationDataModule(Demo(tmp_path / "demo", num_cases=10), pipelines, 32, **kwargs)


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """Ids of the samples read through the source (not the cache), in order."""
    seen: list[str] = []
    original = Demo.read
    monkeypatch.setattr(Demo, "read", lambda self, s: seen.append(s.id) or original(self, s))
    return seen


def caches(tmp_path) -> list[str]:
    """The built caches (not their lock files, nor temporary build folders)."""
    folder = tmp_path / "cache" / "samples"
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_each_sample_is_read_once_and_later_runs_reuse_the_cache(tmp_path, reads):
    first = datamodule(tmp_path)
    first.prepare_data()
    every_id = sorted(s.id for split in first.splits.values() for s in split)
    assert sorted(reads) == every_id and len(every_id) == 10
    uncached = datamodule(tmp_path, cache={"enabled": False})
    for split in ("train", "val", "test"):
        dataset, plain = first.dataset(split), uncached.dataset(split)
        for _ in range(3):  # three epochs, nothing read again
            for index in range(len(dataset)):
                item, expected = dataset[index], plain[index]
                assert torch.equal(item["image"], expected["image"])
                assert torch.equal(item["mask"], expected["mask"])
    assert len(reads) == 10 + sum(len(s) for s in first.splits.values()) * 3  # only uncached

    reads.clear()
    datamodule(tmp_path).prepare_data()  # the next run, same data and size
    assert reads == [] and len(caches(tmp_path)) == 1


def test_an_edited_file_or_another_size_builds_a_new_cache(tmp_path, reads):
    datamodule(tmp_path).prepare_data()
    image = next((tmp_path / "demo").rglob("IMD003.bmp"))
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    reads.clear()
    datamodule(tmp_path).prepare_data()
    assert len(reads) == 10 and len(caches(tmp_path)) == 2
    datamodule(tmp_path, scale=2.0).prepare_data()
    assert len(caches(tmp_path)) == 3
    datamodule(tmp_path, scale=2.0).prepare_data()
    assert len(caches(tmp_path)) == 3


def test_working_size_keeps_the_aspect_ratio_and_never_enlarges():
    assert working_size(570, 765, (512, 512)) == (512, 687)  # PH2-sized for 256 px x 2
    assert working_size(765, 570, (512, 512)) == (687, 512)
    assert working_size(100, 140, (256, 256)) == (100, 140)
    assert working_size(100, 140, None) == (100, 140)


def test_cache_scale_stores_images_shrunk_to_the_working_size(tmp_path):
    dm = datamodule(tmp_path, scale=1.5)  # at least 48 px per side for 32 px training
    sample = dm.locate()["train"][0]
    original_image, original_mask = dm.source.read(sample)
    height, width = original_image.shape[:2]
    image, mask = dm.sample_cache().read(sample.id)
    expected_hw = working_size(height, width, (48, 48))
    assert image.shape == (*expected_hw, 3) and min(expected_hw) == 48
    size = (expected_hw[1], expected_hw[0])
    np.testing.assert_array_equal(
        image, cv2.resize(original_image, size, interpolation=cv2.INTER_AREA)
    )
    np.testing.assert_array_equal(
        mask, cv2.resize(original_mask, size, interpolation=cv2.INTER_NEAREST)
    )


def test_workers_share_the_cache_and_deliver_uint8(tmp_path):
    dm = datamodule(tmp_path, [A.Resize(32, 32), A.HorizontalFlip()])
    dm.prepare_data()
    dataset = SeededAugmentation(dm.dataset("train"), seed=0)
    cache = dm.sample_cache()
    copy = pickle.loads(pickle.dumps(cache))  # what a spawned worker gets
    sample_id = dm.splits["train"][0].id
    for got, expected in zip(copy.read(sample_id), cache.read(sample_id), strict=True):
        np.testing.assert_array_equal(got, expected)

    def batches(workers):
        loader = DataLoader(dataset, batch_size=3, num_workers=workers)
        return [(b["image"], b["mask"]) for b in loader]

    in_process, in_workers = batches(0), batches(2)
    assert in_process[0][0].dtype == torch.uint8 and in_process[0][1].dtype == torch.uint8
    for (image, mask), (image_w, mask_w) in zip(in_process, in_workers, strict=True):
        assert torch.equal(image, image_w) and torch.equal(mask, mask_w)


def test_transforms_may_write_into_cached_arrays_without_changing_the_cache(tmp_path):
    dm = datamodule(tmp_path)
    dm.prepare_data()
    cache = dm.sample_cache()
    sample_id = next(iter(cache.entries))
    image, _ = cache.read(sample_id)
    before = image.copy()
    image[:] = 0
    np.testing.assert_array_equal(cache.read(sample_id)[0], before)


def test_an_unwritable_cache_folder_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = {"enabled": True, "dir": blocker / "cache"}
    with pytest.raises(LightsegError, match=r"Cannot lock .*paths\.cache_dir"):
        datamodule(tmp_path, cache=cache).prepare_data()  # the demo's prepare() needs its lock
    deep = SegmentationDataModule(
        DeepGray(tmp_path), {"train": [], "eval": []}, mean=[0.5], std=[0.25], cache=cache
    )
    with pytest.raises(LightsegError, match=r"data\.cache\.dir.*data\.cache\.enabled=false"):
        deep.prepare_data()


def test_a_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    dm = datamodule(tmp_path)
    dm.locate()
    original, count = Demo.read, []

    def fail_on_third(self, sample):
        count.append(sample.id)
        if len(count) == 3:
            raise LightsegError(f"Cannot read image file '{sample.image}'")
        return original(self, sample)

    monkeypatch.setattr(Demo, "read", fail_on_third)
    with pytest.raises(LightsegError, match="Cannot read image file"):
        dm.prepare_data()
    assert [p.suffix for p in (tmp_path / "cache" / "samples").iterdir()] == [".lock"]
    monkeypatch.setattr(Demo, "read", original)
    dm.prepare_data()
    (folder,) = caches(tmp_path)
    assert (tmp_path / "cache" / "samples" / folder / INDEX).is_file()


def test_a_full_disk_during_a_build_is_one_paragraph_with_the_space_needed(tmp_path, monkeypatch):
    dm = datamodule(tmp_path)
    dm.locate()
    room = 200_000  # two or three of the demo's samples
    monkeypatch.setattr(cache, "open", partial(full_disk_open, room=room), raising=False)
    with pytest.raises(LightsegError) as raised:
        dm.prepare_data()
    folder = tmp_path / "cache" / "samples"
    assert f"The disk is full: the data cache could not be written in '{folder}'" in str(
        raised.value
    )
    assert "data.cache.dir" in str(raised.value)
    assert [p.suffix for p in folder.iterdir()] == [".lock"]  # no partial build left
    monkeypatch.undo()
    dm.prepare_data()
    (built,) = caches(tmp_path)
    size = (folder / built / PIXELS).stat().st_size
    needed = re.search(r"about ([\d.]+) KiB needed", str(raised.value))
    # extrapolated from the 2 or 3 samples written before the disk filled (their sizes vary)
    assert abs(float(needed[1]) * 1024 - size) < 0.2 * size


class OpenCVThreads(Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        return cv2.getNumThreads()


def test_loader_workers_run_opencv_on_one_thread(tmp_path):
    dm = datamodule(tmp_path, num_workers=1)
    dm.prepare_data()
    assert dm.val_dataloader().worker_init_fn is init_loader_worker
    loader = DataLoader(OpenCVThreads(), num_workers=1, worker_init_fn=init_loader_worker)
    assert [int(threads) for threads in loader] == [1, 1]


class DeepGray(SegmentationSource):
    """Six 16-bit single-channel images [H, W, 1] with their masks, made in memory."""

    classes = ("background", "foreground")
    in_channels = 1

    def find(self) -> list[Sample]:
        return [Sample(f"scan{i}", self.root / f"scan{i}.tif") for i in range(6)]

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(int(sample.id[4:]))
        image = rng.integers(0, 65536, (40, 50, 1), dtype=np.uint16)
        return image, (image[..., 0] > 32768).astype(np.uint8)


@pytest.mark.parametrize("cache_scale", [None, 1.0])
def test_16_bit_single_channel_images_keep_their_type_and_axis_in_the_cache(tmp_path, cache_scale):
    def deep(enabled: bool) -> SegmentationDataModule:
        pipelines = {"train": [A.Resize(32, 32)], "eval": [A.Resize(32, 32)]}
        cache = {"enabled": enabled, "scale": cache_scale, "dir": tmp_path / "cache"}
        return SegmentationDataModule(
            DeepGray(tmp_path), pipelines, 32, 8, 0, mean=[0.5], std=[0.25], cache=cache
        )

    cached, uncached = deep(True), deep(False)
    cached.prepare_data()
    sample = cached.splits["train"][0]
    image, mask = cached.sample_cache().read(sample.id)
    original, original_mask = DeepGray(tmp_path).read(sample)
    assert image.dtype == np.uint16 and image.ndim == 3 and image.shape[2] == 1
    if cache_scale is None:
        np.testing.assert_array_equal(image, original)
        np.testing.assert_array_equal(mask, original_mask)
    else:  # shrunk to 32 px on the short side, the channel axis kept
        assert image.shape == (32, 40, 1) and mask.shape == (32, 40)
    item = cached.dataset("train")[0]
    # 16-bit pixels arrive as float32 in [0, 1] (x / 65535), the same with or without a cache
    assert item["image"].dtype == torch.float32 and item["image"].shape == (1, 32, 32)
    if cache_scale is None:
        assert torch.equal(item["image"], uncached.dataset("train")[0]["image"])
    resized = cv2.resize(image, (32, 32), interpolation=cv2.INTER_LINEAR)
    assert item["image"][0].numpy() == pytest.approx(resized / 65535.0, abs=1e-6)
    assert float(item["image"].max()) <= 1.0


def build_demo_cache(root: str, cache_dir: str, reads_file: str) -> None:
    """One process of a two-"node" job: open the demo's cache, noting each sample it reads."""
    source = Demo(root, num_cases=10)
    source.prepare()
    samples = source.find()

    def read(sample):
        with open(reads_file, "a") as file:
            file.write(f"{sample.id}\n")
        time.sleep(0.05)  # long enough for the other process to arrive mid-build
        return read_pair(source, sample)

    open_cache(source, samples, read, Path(cache_dir) / "samples").read(samples[0].id)


def test_two_nodes_sharing_the_cache_folder_build_it_once(tmp_path):
    Demo(tmp_path / "demo", num_cases=10).prepare()
    reads = tmp_path / "reads.txt"
    spawn = multiprocessing.get_context("spawn")
    args = (str(tmp_path / "demo"), str(tmp_path / "cache"), str(reads))
    nodes = [spawn.Process(target=build_demo_cache, args=args) for _ in range(2)]
    for node in nodes:
        node.start()
    for node in nodes:
        node.join(120)
    assert [node.exitcode for node in nodes] == [0, 0]
    assert len(reads.read_text().split()) == 10  # every sample read once, by one of them
    assert len(caches(tmp_path)) == 1 and not list((tmp_path / "cache").glob("*/*.partial"))


# --- damage, as the world makes it ---------------------------------------------------------


def assert_reads_as_the_source(cache, source, samples) -> None:
    for sample in samples:
        for cached, read in zip(cache.read(sample.id), read_pair(source, sample), strict=True):
            np.testing.assert_array_equal(cached, read)


def truncate_pixels(folder: Path) -> str:
    size = (folder / PIXELS).stat().st_size
    os.truncate(folder / PIXELS, size // 2)  # a copy cut short, a full disk
    return f"pixels.u8 has {size // 2} bytes, {size} were written"


def empty_pixels(folder: Path) -> str:
    size = (folder / PIXELS).stat().st_size
    os.truncate(folder / PIXELS, 0)  # once: numpy's "cannot reshape array of size 0"
    return f"pixels.u8 has 0 bytes, {size} were written"


def garbage_index(folder: Path) -> str:
    (folder / INDEX).write_text('{"version": 3, "samples": {"IMD0')  # JSONDecodeError once
    return "index.json does not match the checksum in complete.json"


def index_without_samples(folder: Path) -> str:
    """An index missing its field, with a record that matches it (a foreign writer's)."""
    text = json.dumps({"version": 3}).encode()
    (folder / INDEX).write_bytes(text)
    record = json.loads((folder / RECORD).read_text())
    record["index"] = hashlib.sha1(text).hexdigest()
    (folder / RECORD).write_text(json.dumps(record))
    return "index.json is not a cache index (KeyError: 'samples')"


def record_missing(folder: Path) -> str:
    (folder / RECORD).unlink()  # a cache copied without its last file
    return "complete.json is missing"


@pytest.mark.parametrize(
    "damage", [truncate_pixels, empty_pixels, garbage_index, index_without_samples, record_missing]
)
def test_a_damaged_cache_is_reported_in_one_line_and_rebuilt(tmp_path, reads, caplog, damage):
    datamodule(tmp_path).prepare_data()
    (name,) = caches(tmp_path)
    folder = tmp_path / "cache" / "samples" / name
    before = (folder / PIXELS).read_bytes()
    reason = damage(folder)
    reads.clear()
    with caplog.at_level(logging.INFO):
        dm = datamodule(tmp_path)
        dm.prepare_data()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"The data cache '{folder}' is damaged ({reason}): rebuilding it."]
    assert len(reads) == 10 and caches(tmp_path) == [name]  # rebuilt in place, read once more
    assert (folder / PIXELS).read_bytes() == before
    assert_reads_as_the_source(dm.sample_cache(), dm.source, dm.splits["train"])


KILLED_BUILD = """
import sys, time
from pathlib import Path
from lightseg.data.cache import open_cache
from lightseg.data.demo import Demo
from lightseg.data.source import fingerprint, read_pair

source = Demo(sys.argv[1], num_cases=10)
def slow_read(sample):
    print(sample.id, flush=True)
    time.sleep(0.3)
    return read_pair(source, sample)
open_cache(source, source.find(), slow_read, Path(sys.argv[2]))
"""


def test_a_build_killed_midway_is_removed_and_rebuilt_by_the_next_process(tmp_path):
    source, folder = Demo(tmp_path / "demo", num_cases=10), tmp_path / "cache" / "samples"
    source.prepare()
    builder = subprocess.Popen(
        [sys.executable, "-c", KILLED_BUILD, str(source.root), str(folder)],
        stdout=subprocess.PIPE,
        text=True,
    )
    started = [builder.stdout.readline() for _ in range(3)]  # three samples into the build
    os.kill(builder.pid, signal.SIGKILL)
    builder.wait(60)
    assert builder.returncode == -signal.SIGKILL and all(started)
    (left,) = folder.glob(".*.partial")  # what the killed process left behind
    assert (left / PIXELS).is_file() and not (left / RECORD).exists()

    samples = source.find()
    cache = open_cache(source, samples, lambda s: read_pair(source, s), folder)
    assert not list(folder.glob(".*.partial")) and len(caches(tmp_path)) == 1
    assert_reads_as_the_source(cache, source, samples)


#: Another valid value for every setting of the folder source.
FOLDER_CHANGES = {
    "root": "other",
    "classes": ["bg", "fg"],
    "images": "pictures",
    "masks": "labels",
    "mask_pattern": "{stem}_mask",
    "split_lists": None,
    "csv": "pairs.csv",
    "palette": [[0, 0, 0], [255, 255, 255]],
    "ignore_color": [255, 0, 0],
    "in_channels": 1,
}


def test_changing_any_setting_of_the_folder_source_keys_a_new_cache(tmp_path):
    assert set(FOLDER_CHANGES) == set(inspect.signature(Folder).parameters)  # every setting
    samples = [Sample("a", tmp_path / "a.png", tmp_path / "a_mask.png")]
    key = fingerprint(Folder(tmp_path), samples)
    for name, value in FOLDER_CHANGES.items():
        value = tmp_path / value if name == "root" else value
        assert fingerprint(Folder(**{"root": tmp_path, name: value}), samples) != key, name
    assert fingerprint(Folder(tmp_path), samples) == key


def test_a_changed_setting_builds_a_new_cache_through_the_datamodule(tmp_path):
    from tests.fixtures_datasets import write_folder

    root = write_folder(tmp_path / "photos")

    def cached(**source_settings) -> set[str]:
        pipelines = {"train": [], "eval": []}
        dm = SegmentationDataModule(
            Folder(root, **source_settings), pipelines, cache={"enabled": True, "dir": tmp_path}
        )
        dm.prepare_data()
        return {p.name for p in (tmp_path / "samples").iterdir() if not p.name.startswith(".")}

    assert len(cached()) == 1
    assert len(cached()) == 1  # the same settings reuse it
    assert len(cached(classes=["skin", "lesion"])) == 2

"""Fetch a dataset into ``paths.data_dir`` where it has a public URL, then check it loads.

    python -m lightseg.data.download data=voc [overrides]    (or: make data DATASET=voc)

Archives are MD5-checked and unpacked in a scratch folder removed on failure. ``folder`` is
checked in full, every pair read as training reads it (README: Datasets). Every dataset's
exact and near-duplicate images are listed (:mod:`lightseg.data.leakage`).
"""

from __future__ import annotations

import copy
import tempfile
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import numpy as np
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.progress import track
from rich.table import Table
from torchvision.datasets import SBDataset
from torchvision.datasets.utils import download_and_extract_archive
from torchvision.datasets.voc import DATASET_YEAR_DICT

from lightseg.config import app
from lightseg.data import leakage
from lightseg.data.source import read_pair
from lightseg.data.statistics import Accumulator
from lightseg.errors import LightsegError
from lightseg.utils.console import console


class Archive(NamedTuple):
    url: str
    md5: str
    into: str  # folder under data_dir the archive is unpacked into
    gives: str  # a path under ``into`` that exists once it is unpacked


VOC = DATASET_YEAR_DICT["2012"]  # VOC and SBD: the URLs and MD5s torchvision downloads
COCO_ZIPS = "http://images.cocodataset.org/zips"
ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "voc": (
        Archive(VOC["url"], VOC["md5"], ".", "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"),
        Archive(SBDataset.url, SBDataset.md5, ".", "benchmark_RELEASE/dataset/val.txt"),
    ),
    "coco": (
        Archive(
            "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
            "f4bbac642086de4f52a3fdda2de5fa2c",
            "coco",
            "annotations/instances_val2017.json",
        ),
        Archive(f"{COCO_ZIPS}/val2017.zip", "442b8da7639aecaf257c1dceb8ba8c80", "coco", "val2017"),
        Archive(
            f"{COCO_ZIPS}/train2017.zip", "cced6f7f71b7629ddf16f17bbcfab6b2", "coco", "train2017"
        ),
    ),
}
#: Defaults (unless the command line sets them) so that the check covers all that was fetched.
#: (split_dir: make data writes no run folder.)
CHECK_SETTINGS = {"voc": {"data.source.use_sbd": True}}


def fetch(archive: Archive, data_dir: Path) -> None:
    """Download, verify and unpack one archive, unless what it gives is already there."""
    gives = data_dir / archive.into / archive.gives
    if gives.exists():
        console.print(f"[green]Found[/] {gives}: skipping {archive.url.rsplit('/', 1)[-1]}")
        return
    console.print(f"Downloading {archive.url} (MD5 {archive.md5}) into {data_dir / archive.into}")
    data_dir.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.TemporaryDirectory(
        prefix=".lightseg-download-", dir=data_dir, ignore_cleanup_errors=True
    )
    try:
        with scratch as folder:  # removed, with what it holds, however the block ends
            unpacked = Path(folder) / "unpacked"
            download_and_extract_archive(archive.url, folder, unpacked, md5=archive.md5)
            move_into(unpacked, data_dir / archive.into)
    except (OSError, RuntimeError, ValueError) as error:  # URLError is an OSError
        raise LightsegError(
            f"Could not fetch {archive.url} ({type(error).__name__}: {error}). Download it "
            f"yourself (browser, wget or curl), check its MD5 is {archive.md5}, and unpack it "
            f"into '{data_dir / archive.into}' so that '{gives}' exists. "
            "Then run this command again to check the result."
        ) from None


def move_into(source: Path, target: Path) -> None:
    """Move the unpacked tree into ``target``, merging folders that already exist there."""
    target.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        destination = target / entry.name
        if destination.is_dir() and entry.is_dir():
            move_into(entry, destination)
        elif not destination.exists():
            entry.rename(destination)


def prepare_dataset(cfg: DictConfig, name: str, given: set[str] = frozenset()) -> None:
    """Fetch dataset ``name``'s public archives, then prepare and find its samples (``given``:
    the keys the command line set)."""
    cfg = copy.deepcopy(cfg)  # the caller's config stays as it is
    for key, value in {"data.split_dir": None, **CHECK_SETTINGS.get(name, {})}.items():
        if key not in given:
            OmegaConf.update(cfg, key, value)
    datamodule = instantiate(cfg.data, _convert_="all")
    if name == "folder":
        check_folder(datamodule)
    else:
        for archive in ARCHIVES.get(name, ()):
            fetch(archive, Path(cfg.paths.data_dir))
        source, splits = datamodule.source, datamodule.locate()
        samples = leakage.used(splits)
        counts = Counter(sample.subset or sample.stratum or "all" for sample in samples)
        summary = ", ".join(f"{name}: {count}" for name, count in sorted(counts.items()))
        console.print(
            f"[green]{type(source).__name__} is ready[/] under {source.root}: {len(samples)} "
            f"samples ({summary})."
        )
    leakage.report(datamodule.source, datamodule.locate(), datamodule.cache_dir)


def check_folder(datamodule) -> None:
    """Read every pair of a ``data=folder`` dataset and print what training will see."""
    source, splits = datamodule.source, datamodule.locate()
    used = sorted(leakage.used(splits), key=lambda s: s.id)
    how = "split lists" if any(s.subset for s in used) else "generated split"
    sizes = ", ".join(f"{name} {len(splits[name])}" for name in ("train", "val", "test"))
    console.print(
        f"[green]Folder[/] {source.root}: {len(used)} image/mask pairs ({how}: {sizes}); "
        f"{source.in_channels} channel(s) per image"
    )
    console.print(f"Masks: {source.describe_masks()}")
    everything, train = Accumulator(source.classes), Accumulator(source.classes)
    in_train = {s.id for s in splits["train"]}
    shapes = Counter()
    for sample in track(used, description="Reading every pair", console=console):
        image, mask = read_pair(source, sample)  # every check training makes, on every file
        everything.add(image, mask)
        if sample.id in in_train:
            train.add(image, mask)
        shapes[image.shape[1], image.shape[0]] += 1
    result = everything.result()
    table = Table("class", "pixel share", "images with class", title="Classes (all pairs)")
    for name, share, images in zip(source.classes, result.shares, result.class_images, strict=True):
        table.add_row(name, f"{share:.2%}", str(images))
    console.print(table)
    console.print(size_histogram(shapes))
    stats = datamodule.statistics(train.result())
    console.print(
        f"Training split, per channel (pixels scaled to [0, 1]): data.mean={list(stats.mean)} "
        f"data.std={list(stats.std)}; stored in {datamodule.statistics_folder} for "
        "data.mean=auto data.std=auto."
    )


def size_histogram(shapes: Counter, listed: int = 12, bins: int = 8) -> Table:
    """Each distinct width x height with its count, or (many sizes) widths and heights binned."""
    if len(shapes) <= listed:
        table = Table("width x height", "images", title="Image sizes")
        for (width, height), count in sorted(shapes.items()):
            table.add_row(f"{width} x {height}", str(count))
        return table
    sizes, counts = np.array(list(shapes)), np.array(list(shapes.values()))
    low, high = int(sizes.min()), int(sizes.max())
    edges = np.linspace(low, high + 1, min(bins, high - low + 1) + 1)
    widths, heights = (np.histogram(sizes[:, i], edges, weights=counts)[0] for i in (0, 1))
    table = Table("pixels", "widths", "heights", title="Image sizes")
    for start, stop, *binned in zip(edges, edges[1:], widths, heights, strict=False):
        table.add_row(f"{start:.0f} - {stop - 1:.0f}", *map(str, binned))
    return table


@app("download")
def main(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    given = {o.split("=", 1)[0].lstrip("+~") for o in hydra_cfg.overrides.task}
    prepare_dataset(cfg, hydra_cfg.runtime.choices["data"], given)


if __name__ == "__main__":
    main()

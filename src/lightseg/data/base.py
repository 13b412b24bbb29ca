"""Everything the datasets share: samples, splits, loaders, transforms and readable errors.

A dataset file only subclasses :class:`SegmentationSource` and answers three questions:
where are the files (``find``), which ids go to which split (``split``), and how to read one
(image, mask) pair (``read``). The :class:`SegmentationDataModule` does the rest.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightseg.config import image_size_hw
from lightseg.data.cache import SampleCache, open_cache
from lightseg.data.sampling import (
    EpochSampler,
    ResumableDataLoader,
    SeededAugmentation,
    batches_done_in_epoch,
)
from lightseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_pipeline,
    init_loader_worker,
    one_opencv_thread,
)
from lightseg.errors import LightsegError
from lightseg.task import IGNORE_INDEX, Task

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Sample:
    """One (image, mask) pair on disk.

    ``stratum`` groups samples for stratified splits; ``subset`` names the official list a
    sample comes from (VOC's ``train``/``val``, COCO's ``train2017``) for official splits.
    """

    id: str
    image: Path
    mask: Path | None = None
    stratum: str | None = None
    subset: str | None = None


class SegmentationSource:
    """A dataset in its official on-disk layout under ``root``."""

    #: Class names, background first. Two names make a binary task.
    classes: tuple[str, ...] = ()
    #: What to tell a user whose ``root`` is missing: where to get the data.
    how_to_get: str = ""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def prepare(self) -> None:
        """Download, generate or cache files; runs once per node before ``find``."""

    def find(self) -> list[Sample]:
        raise NotImplementedError

    def split(
        self, samples: list[Sample], fractions: Mapping[str, float], seed: int
    ) -> dict[str, list[Sample]]:
        """Deterministic split stratified by ``Sample.stratum``; override for official splits."""
        return stratified_split(samples, fractions, seed)

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image uint8 [H, W, 3], mask uint8 [H, W] of class indices, 255 = ignore)``."""
        raise NotImplementedError

    def missing(self, looked_for: Path | str) -> LightsegError:
        """The error for a dataset that is not where the config says."""
        return LightsegError(
            f"{type(self).__name__} not found: looked for '{looked_for}' under root "
            f"'{self.root}'. {self.how_to_get} Set the data folder with LIGHTSEG_DATA_DIR or "
            "paths.data_dir=... . To try lightseg without downloading anything, run `make train` "
            "(the built-in demo data)."
        )


def open_image(path: Path) -> Image.Image:
    """Open an image file, turning a missing or corrupt file into an error that names it."""
    try:
        image = Image.open(path)
        image.load()
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise LightsegError(
            f"Cannot read image file '{path}' ({error}). Re-extract this file from the "
            "dataset's official archive, or remove the sample from the dataset folder."
        ) from None
    return image


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(open_image(path).convert("RGB"))


def read_label_png(path: Path, num_classes: int) -> np.ndarray:
    """Class indices stored in a palette or grayscale PNG, checked to be < num_classes or 255.

    A palette PNG's pixels are already indices; its colours are only for display and ignored.
    """
    image = open_image(path)
    if image.mode not in ("P", "L"):
        raise LightsegError(
            f"Label mask '{path}' is a {image.mode} image, but must hold class indices (a "
            "palette or grayscale PNG). Re-extract it from the official archive; do not save "
            "masks through tools that convert them to RGB."
        )
    return check_labels(np.asarray(image), num_classes, path)


def check_labels(mask: np.ndarray, num_classes: int, path: Path) -> np.ndarray:
    """``mask`` unchanged if every value is a class index or IGNORE_INDEX, else a clear error."""
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise LightsegError(
            f"Label mask '{path}' holds values {bad.tolist()[:10]}, but only class indices "
            f"0..{num_classes - 1} and {IGNORE_INDEX} (ignore) are allowed. The file is damaged "
            "or belongs to another dataset: re-extract it from the official archive."
        )
    return mask


def at_least(value, minimum: int, key: str) -> int:
    """``value`` as an int >= ``minimum``, or an error naming the config key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LightsegError(f"{key}={value!r} must be a whole number >= {minimum}.")
    return int(value)


def stratified_split(
    samples: Sequence[Sample], fractions: Mapping[str, float], seed: int
) -> dict[str, list[Sample]]:
    """Shuffle each stratum with ``seed`` and cut it into val/test fractions; the rest is train."""
    val, test = float(fractions.get("val", 0.0)), float(fractions.get("test", 0.0))
    if val < 0 or test < 0 or val + test >= 1:
        raise LightsegError(
            f"data.split fractions val={val} and test={test} must be >= 0 and sum to less than 1."
        )
    strata: dict[str | None, list[Sample]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: s.id):
        strata[sample.stratum].append(sample)
    # Give each stratum's shuffled members evenly spaced positions in [0, 1) and merge by
    # position: any prefix of the merged order keeps the strata proportions, and the split
    # sizes come out exact for the whole set rather than rounded per stratum.
    rng = np.random.default_rng(seed)
    keyed = []
    for stratum in sorted(strata, key=str):
        members = strata[stratum]
        for rank, index in enumerate(rng.permutation(len(members))):
            keyed.append(((rank + 0.5) / len(members), str(stratum), members[index]))
    ordered = [sample for *_, sample in sorted(keyed, key=lambda item: item[:2])]
    n_val, n_test = round(val * len(ordered)), round(test * len(ordered))
    groups = {
        "val": ordered[:n_val],
        "test": ordered[n_val : n_val + n_test],
        "train": ordered[n_val + n_test :],
    }
    return {name: sorted(groups[name], key=lambda s: s.id) for name in SPLITS}


def subset_map(splits: Mapping[str, str]) -> dict[str, str]:
    """``data.source.splits``, checked to map each of train/val/test to an official subset.

    Two splits may share a subset (``test: val`` where the official test labels are withheld).
    """
    unmapped = [name for name in SPLITS if not splits.get(name)]
    if unmapped:
        raise LightsegError(
            f"data.source.splits={dict(splits)} names no subset for {unmapped}: map each of "
            f"{list(SPLITS)} to one of the dataset's official subsets."
        )
    return {name: str(splits[name]) for name in SPLITS}


def official_split(
    samples: Sequence[Sample], subsets: Mapping[str, str]
) -> dict[str, list[Sample]]:
    """Each split takes the samples of the subset ``subsets`` maps it to (``Sample.subset``)."""
    return {
        name: sorted((s for s in samples if s.subset == subsets[name]), key=lambda s: s.id)
        for name in SPLITS
    }


def read_sample(source: SegmentationSource, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """``source.read(sample)``, checked to give an image and a mask of the same size."""
    image, mask = source.read(sample)
    if image.shape[:2] != mask.shape[:2]:
        raise LightsegError(
            f"Image and mask of sample '{sample.id}' differ in size: {sample.image} is "
            f"{image.shape[1]}x{image.shape[0]} but {sample.mask} is "
            f"{mask.shape[1]}x{mask.shape[0]}. Re-extract both files from the official archive."
        )
    return image, mask


class SegmentationDataset(Dataset):
    """Reads samples through a source (or its cache) and applies an albumentations pipeline.

    Items are uint8 tensors, image ``[3, H, W]`` and mask ``[H, W]``: the model normalises
    the image and widens the mask on its device (``SegmentationModule.on_after_batch_transfer``).
    """

    def __init__(
        self,
        source: SegmentationSource,
        samples: Sequence[Sample],
        transform,
        cache: SampleCache | None = None,
    ) -> None:
        self.source, self.samples, self.transform = source, list(samples), transform
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        sample = self.samples[index]
        if self.cache is not None:
            return self.cache.read(sample.id)
        return read_sample(self.source, sample)

    def __getitem__(self, index: int) -> dict:
        image, mask = self.read(index)
        out = self.transform(image=image, mask=mask)
        return {"image": out["image"], "mask": out["mask"], "id": self.samples[index].id}


class EvalDistributedSampler(DistributedSampler):
    """Shards evaluation data across ranks without padding, so no sample is counted twice."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))


class SegmentationDataModule(L.LightningDataModule):
    """Splits a source, builds the train/eval pipelines and serves per-device batches.

    Batch size semantics live here and only here: ``batch_size`` is per device (per process),
    so the global batch is ``batch_size * devices * num_nodes``. Setting ``global_batch_size``
    instead fixes the global batch and divides it over the processes.

    Two seeds: ``seed`` (the run's, ``${seed}``) orders the data and draws the augmentations;
    ``split_seed`` (fixed by default) decides the split, so runs over several seeds are tested
    on the same images unless the split is varied on purpose.

    ``cache=True`` reads every sample once into a memory-mapped file under ``cache_dir``
    (default ``<source root>/lightseg_cache``), shrunk so that each side stays at least
    ``cache_scale`` times ``image_size`` (None: as read); see ``lightseg.data.cache``.
    """

    def __init__(
        self,
        source: SegmentationSource,
        transforms: Mapping[str, Sequence],
        image_size: int | Sequence[int] = (256, 256),
        batch_size: int = 8,
        num_workers: int = 2,
        split: Mapping[str, float] | None = None,
        seed: int = 0,
        split_seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        split_dir: str | Path | None = None,
        pin_memory: bool | None = None,
        global_batch_size: int | None = None,
        cache: bool = False,
        cache_scale: float | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.image_size = image_size_hw(image_size)
        self.batch_size = at_least(batch_size, 1, "data.batch_size")
        self.num_workers = at_least(num_workers, 0, "data.num_workers")
        self.global_batch_size = (
            None
            if global_batch_size is None
            else at_least(global_batch_size, 1, "data.global_batch_size")
        )
        self.cache = bool(cache)
        if cache_scale is not None and not cache_scale > 0:
            raise LightsegError(
                f"data.cache_scale={cache_scale} must be > 0 (e.g. 2: keep twice the training "
                "size), or null to cache images as read."
            )
        self.cache_scale = cache_scale
        self.cache_dir = Path(cache_dir) if cache_dir else self.source.root / "lightseg_cache"
        self._sample_cache: SampleCache | None = None
        self.fractions = dict(split or {"val": 0.2, "test": 0.2})
        self.seed = int(seed)  # data order and augmentations
        self.split_seed = int(split_seed)  # which samples are train, val and test
        self.mean, self.std = tuple(mean), tuple(std)
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise LightsegError(
                f"data.mean and data.std need one value per image channel ({self.in_channels}), "
                f"got {len(self.mean)} and {len(self.std)}."
            )
        self.split_dir = Path(split_dir) if split_dir else None
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.pipelines = {
            "train": build_pipeline(transforms["train"]),
            "eval": build_pipeline(transforms["eval"]),
        }
        self.splits: dict[str, list[Sample]] | None = None
        self.datasets: dict[str, SegmentationDataset] = {}

    @property
    def in_channels(self) -> int:
        """Channels of the images the source reads (3: RGB)."""
        return int(getattr(self.source, "in_channels", 3))

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.source.classes)

    @property
    def task(self) -> Task:
        return Task(self.classes)

    def prepare_data(self) -> None:
        """Once per node, before the other processes read: the source's files, then the cache."""
        self.source.prepare()
        self.sample_cache()

    def sample_cache(self) -> SampleCache | None:
        """The cache of every sample in the splits (built on first use), or None without one."""
        if not self.cache:
            return None
        if self._sample_cache is None:
            unique = {s.id: s for split in self.locate().values() for s in split}
            minimum = None
            if self.cache_scale is not None:
                minimum = [max(1, round(side * self.cache_scale)) for side in self.image_size]
            self._sample_cache = open_cache(
                self.source,
                list(unique.values()),
                partial(read_sample, self.source),
                self.cache_dir,
                minimum,
            )
        return self._sample_cache

    def locate(self, prepare: bool = False) -> dict[str, list[Sample]]:
        """Find the source's samples and split them (once); with ``prepare``, prepare the source
        first (download, generate, cache: sources make that safe to call from many processes).

        Cheap next to building a pretrained network, so training calls it first.
        """
        if prepare:
            self.source.prepare()
        if self.splits is None:
            splits = self.source.split(self.source.find(), self.fractions, self.split_seed)
            empty = [name for name in SPLITS if not splits.get(name)]
            if empty:
                sizes = {name: len(splits.get(name, [])) for name in SPLITS}
                raise LightsegError(
                    f"{type(self.source).__name__} under '{self.source.root}' gives empty "
                    f"split(s) {empty} (sizes {sizes}). Add data or change data.split (val/test "
                    "fractions)."
                )
            self.splits = splits
        return self.splits

    def setup(self, stage: str | None = None) -> None:
        self.locate()
        if self.split_dir is not None and (self.trainer is None or self.trainer.is_global_zero):
            self.write_splits(self.split_dir / "splits")

    def write_splits(self, folder: Path) -> None:
        """One id per line, per split: the exact samples a run used."""
        folder.mkdir(parents=True, exist_ok=True)
        for name, samples in (self.splits or {}).items():
            (folder / f"{name}.txt").write_text("".join(f"{s.id}\n" for s in samples))

    def dataset(self, split: str) -> SegmentationDataset:
        if split not in self.datasets:
            self.locate()
            pipeline = self.pipelines["train" if split == "train" else "eval"]
            self.datasets[split] = SegmentationDataset(
                self.source, self.splits[split], pipeline, cache=self.sample_cache()
            )
        return self.datasets[split]

    def device_batch_size(self) -> int:
        """Samples per batch on each process."""
        world = self.trainer.world_size if self.trainer is not None else 1
        if self.global_batch_size is None:
            return self.batch_size
        if self.global_batch_size < world or self.global_batch_size % world:
            raise LightsegError(
                f"data.global_batch_size={self.global_batch_size} cannot be split evenly over "
                f"{world} processes (devices x nodes). Use a multiple of {world}, or set the "
                "per-device data.batch_size instead (data.global_batch_size=null)."
            )
        return self.global_batch_size // world

    def _loader(self, split: str) -> DataLoader:
        dataset = self.dataset(split)
        train = split == "train"
        batch_size = self.device_batch_size()
        sampler, loader, extra = None, DataLoader, {}
        trainer = self.trainer
        if train:  # order and augmentations from (seed, epoch, sample): see data/sampling.py
            sampler = EpochSampler(len(dataset), self.seed)
            dataset = SeededAugmentation(dataset, self.seed)
            loader = ResumableDataLoader
            extra = {
                "batches_done": lambda: batches_done_in_epoch(self.trainer),
                "generator": torch.Generator().manual_seed(self.seed),
            }
        elif trainer is not None and trainer.world_size > 1:
            sampler = EvalDistributedSampler(dataset, trainer.world_size, trainer.global_rank)
        one_opencv_thread()  # before any worker forks
        return loader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train and len(dataset) > batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            worker_init_fn=init_loader_worker,
            **extra,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

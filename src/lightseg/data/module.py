"""The LightningDataModule: a source's samples, prepared, split, cached and served as batches.

Settings are described in ``configs/data/base/default.yaml``. ``sampler`` (a ``_partial_``) gets
``data_source`` and ``num_samples`` where it takes them, wrapped in a ``SeededSampler``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from lightseg.config import image_size_hw
from lightseg.data.cache import SampleCache, open_cache
from lightseg.data.leakage import used, warn_crossing, with_groups
from lightseg.data.sampling import (
    EvalDistributedSampler,
    ResumableDataLoader,
    SeededAugmentation,
    SeededSampler,
    batches_done_in_epoch,
)
from lightseg.data.source import (
    SPLITS,
    Sample,
    SegmentationSource,
    at_least,
    cache_home,
    check_fold,
    read_pair,
)
from lightseg.data.statistics import SplitStatistics, training_statistics
from lightseg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_pipeline,
    init_loader_worker,
    one_opencv_thread,
    to_unit_range,
)
from lightseg.errors import LightsegError
from lightseg.task import Task
from lightseg.utils.locks import file_lock

log = logging.getLogger(__name__)

AUTO = "auto"  # data.mean / data.std: per-channel values of the training split
SPLIT = {"val": 0.2, "test": 0.2, "seed": 0, "folds": None, "fold": 0, "group_by": None}
CACHE = {"enabled": False, "scale": None, "dir": None}


def grouped(defaults: dict, given: Mapping[str, Any] | None, key: str) -> SimpleNamespace:
    """``defaults`` updated from a config mapping; an unknown key is an error naming it."""
    unknown = [k for k in given or {} if k not in defaults]
    if unknown:
        raise LightsegError(
            f"data.{key}.{unknown[0]} is not a setting: data.{key} takes {', '.join(defaults)}."
        )
    return SimpleNamespace(**{**defaults, **(given or {})})


def prepare_source(source: SegmentationSource, cache_dir: str | Path) -> None:
    """``source.prepare()`` holding its data folder's lock: no two run at once (the contract)."""
    if type(source).prepare is SegmentationSource.prepare:
        return  # nothing to prepare, nothing to lock
    cache_dir, folder = Path(cache_dir).expanduser(), str(source.root.resolve())
    name = f"{source.root.name}-{hashlib.sha1(folder.encode()).hexdigest()[:12]}.lock"
    try:
        with file_lock(cache_dir / "locks" / name, f"preparing {type(source).__name__}"):
            source.prepare()
    except OSError as error:
        raise LightsegError(
            f"Cannot lock '{cache_dir / 'locks' / name}' ({error}) to prepare '{folder}'. Point "
            "paths.cache_dir (or LIGHTSEG_CACHE_DIR) at a writable folder."
        ) from None


class SegmentationDataset(Dataset):
    """Samples through a source (or its cache) and a pipeline: image ``[C, H, W]`` (uint8 for
    8-bit data, else float32 in [0, 1]) and mask uint8 ``[H, W]``, normalised on the device."""

    def __init__(self, source, samples: Sequence[Sample], transform, cache=None) -> None:
        self.source, self.samples, self.transform, self.cache = source, samples, transform, cache

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        pair = self.cache.read(sample.id) if self.cache else read_pair(self.source, sample)
        out = self.transform(image=pair[0], mask=pair[1])
        image = to_unit_range(out["image"])
        return {**sample.extras, "image": image, "mask": out["mask"], "id": sample.id}


class SegmentationDataModule(L.LightningDataModule):
    """Prepares and splits a source and serves per-device batches (see the module docs)."""

    def __init__(
        self,
        source: SegmentationSource,
        transforms: Mapping[str, Sequence],
        image_size: int | Sequence[int] = (256, 256),
        batch_size: int = 8,
        num_workers: int = 2,
        mean: Sequence[float] | Literal["auto"] = IMAGENET_MEAN,
        std: Sequence[float] | Literal["auto"] = IMAGENET_STD,
        clip: float | None = None,
        seed: int = 0,
        split: Mapping[str, Any] | None = None,
        cache: Mapping[str, Any] | None = None,
        sampler: Callable[..., Sampler] | None = None,
        global_batch_size: int | None = None,
        pin_memory: bool | None = None,
        split_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.source = source
        self.image_size = image_size_hw(image_size)
        self.batch_size = at_least(batch_size, 1, "data.batch_size")
        self.num_workers = at_least(num_workers, 0, "data.num_workers")
        self.global_batch_size = global_batch_size
        if global_batch_size is not None:
            at_least(global_batch_size, 1, "data.global_batch_size")
        self.mean = mean if mean == AUTO else tuple(mean)
        self.std = std if std == AUTO else tuple(std)
        self.check_normalization()
        if clip is not None and not (isinstance(clip, int | float) and clip > 0):  # the module
            raise LightsegError(f"data.clip={clip!r} must be a number > 0, or null (no clamp).")
        self.seed = int(seed)  # data order and augmentations
        self.split = grouped(SPLIT, split, "split")
        if self.split.folds is not None:
            check_fold(self.split.folds, self.split.fold)
        self.cache = grouped(CACHE, cache, "cache")
        if self.cache.scale is not None and not self.cache.scale > 0:
            raise LightsegError(
                f"data.cache.scale={self.cache.scale} must be > 0 (e.g. 2: keep twice the "
                "training size), or null to cache images as read."
            )
        self.cache_dir = Path(self.cache.dir or cache_home()).expanduser()
        self.statistics_folder = self.cache_dir / "statistics"
        self.sampler = sampler or RandomSampler
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.split_dir = Path(split_dir) if split_dir else None
        self.pipelines = {name: build_pipeline(transforms[name]) for name in ("train", "eval")}
        self.splits: dict[str, list[Sample]] | None = None
        self._sample_cache: SampleCache | None = None
        self._statistics: SplitStatistics | None = None

    def check_normalization(self) -> None:
        """One mean and std per image channel (``auto`` ones are checked once computed)."""
        for key, values in (("data.mean", self.mean), ("data.std", self.std)):
            if values != AUTO and len(values) != self.in_channels:
                raise LightsegError(
                    f"{key} has {len(values)} values, but the images have {self.in_channels} "
                    "channel(s): data.mean and data.std need one value per image channel. Give "
                    f"{self.in_channels}, or set {key}=auto (computed from the training split)."
                )

    @property
    def in_channels(self) -> int:
        return int(self.source.in_channels)

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.source.classes)

    @property
    def task(self) -> Task:
        return Task(self.classes)

    def locate(self) -> dict[str, list[Sample]]:
        """Prepare, find and split the samples once per process (training calls it first)."""
        if self.splits is None:
            prepare_source(self.source, self.cache_dir)
            cfg = self.split  # data.split
            samples = with_groups(self.source, self.source.find(), cfg.group_by, self.cache_dir)
            if cfg.folds:
                splits = self.source.fold_split(samples, cfg.folds, cfg.fold, cfg.val, cfg.seed)
            else:
                splits = self.source.split(samples, {"val": cfg.val, "test": cfg.test}, cfg.seed)
            empty = [name for name in SPLITS if not splits.get(name)]
            if empty:
                sizes = {name: len(splits.get(name, [])) for name in SPLITS}
                raise LightsegError(
                    f"{type(self.source).__name__} under '{self.source.root}' gives empty "
                    f"split(s) {empty} (sizes {sizes}). Add data or change data.split (val/test "
                    "fractions)."
                )
            self.splits = splits
            if rank_zero_only.rank == 0:  # one warning per run, if make data hashed the images
                warn_crossing(self.source, splits, self.cache_dir)
        if AUTO in (self.mean, self.std):
            stats = self.statistics()
            self.mean = stats.mean if self.mean == AUTO else self.mean
            self.std = stats.std if self.std == AUTO else self.std
            log.info("data.mean=%s data.std=%s (training split)", list(self.mean), list(self.std))
            self.check_normalization()
        return self.splits

    def prepare_data(self) -> None:
        """Once per node, before the other processes: build the splits and sample cache."""
        self.locate()
        self.sample_cache()

    def setup(self, stage: str | None = None) -> None:
        self.locate()
        if self.split_dir is not None and (self.trainer is None or self.trainer.is_global_zero):
            self.split_dir.mkdir(parents=True, exist_ok=True)  # the exact samples a run used
            for name, samples in self.splits.items():
                (self.split_dir / f"{name}.txt").write_text("".join(f"{s.id}\n" for s in samples))

    def statistics(self, measured: SplitStatistics | None = None) -> SplitStatistics:
        """The training split's statistics, cached (``measured``: the caller's, to store)."""
        if self._statistics is None:  # (locate() calls this once it has set self.splits)
            train = (self.splits or self.locate())["train"]
            self._statistics = training_statistics(
                self.source, train, self.statistics_folder, measured
            )
        return self._statistics

    def sample_cache(self) -> SampleCache | None:
        """The cache of every sample in the splits (built on first use), if enabled."""
        if self.cache.enabled and self._sample_cache is None:
            scale, read = self.cache.scale, functools.partial(read_pair, self.source)
            minimum = None if scale is None else [max(1, round(n * scale)) for n in self.image_size]
            samples, folder = used(self.locate()), self.cache_dir / "samples"
            self._sample_cache = open_cache(self.source, samples, read, folder, minimum)
        return self._sample_cache

    def dataset(self, split: str) -> SegmentationDataset:
        pipeline = self.pipelines["train" if split == "train" else "eval"]
        return SegmentationDataset(self.source, self.locate()[split], pipeline, self.sample_cache())

    def device_batch_size(self) -> int:
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
        dataset, train = self.dataset(split), split == "train"
        batch_size, sampler, loader, extra = self.device_batch_size(), None, DataLoader, {}
        trainer = self.trainer
        if train:  # order and augmentations from (seed, epoch, sample): see data/sampling.py
            preset = getattr(self.sampler, "keywords", {})  # what the config set (a partial)
            offered = {"data_source": dataset, "num_samples": len(dataset)}
            takes = inspect.signature(self.sampler).parameters
            chosen = {k: v for k, v in offered.items() if k in takes and k not in preset}
            sampler = SeededSampler(self.sampler(**chosen), self.seed)
            dataset, loader = SeededAugmentation(dataset, self.seed), ResumableDataLoader
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
            worker_init_fn=init_loader_worker,  # stop signals left to the main process
            **extra,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

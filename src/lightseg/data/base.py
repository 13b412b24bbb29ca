"""Everything the datasets share: samples, splits, loaders, transforms and readable errors.

A dataset file only subclasses :class:`SegmentationSource` and answers three questions:
where are the files (``find``), which ids go to which split (``split``), and how to read one
(image, mask) pair (``read``). The :class:`SegmentationDataModule` does the rest.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

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
from lightseg.task import IGNORE_INDEX, Task

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: ``data.mean`` / ``data.std`` value meaning "per-channel values of the training split".
AUTO = "auto"


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

    def fold_split(
        self, samples: list[Sample], folds: int, fold: int, val: float, seed: int
    ) -> dict[str, list[Sample]]:
        """k-fold cross-validation (``data.folds``, ``data.fold``): see :func:`kfold_split`.

        Refused for samples of official subsets (VOC, COCO, a folder's split lists), which a
        re-split would silently ignore.
        """
        fixed = sorted({s.subset for s in samples if s.subset})
        if fixed:
            raise LightsegError(
                f"{type(self).__name__} comes with fixed splits ({', '.join(fixed)}), which "
                "data.folds would ignore. Remove data.folds for the fixed splits, or remove the "
                "split lists (a folder's splits/*.txt or its CSV split column) to cross-validate."
            )
        return kfold_split(samples, folds, fold, val, seed)

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(image [H, W, C], mask uint8 [H, W] of class indices, 255 = ignore)``.

        Images are uint8 RGB (C = 3) unless the source declares ``in_channels``; 16-bit
        (uint16) and float32 pixels are scaled by their range as 8-bit ones are.
        """
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


#: 0/255 masks: foreground >= BINARY_THRESHOLD. More than MAX_UNCLEAR of the pixels strictly
#: between UNCLEAR_LOW and UNCLEAR_HIGH means the mask is not binary (a photo, a soft matte, a
#: multi-class mask), while JPEG noise and anti-aliased edges pass.
BINARY_THRESHOLD, UNCLEAR_LOW, UNCLEAR_HIGH, MAX_UNCLEAR = 128, 32, 223, 0.05


def threshold_binary(values: np.ndarray, path: Path, what: str, hint: str) -> np.ndarray:
    """A 0/255 mask as 0/1 uint8 (foreground >= BINARY_THRESHOLD), or an error naming the file
    if it is not binary; ``what`` names the mask (``"MADS mask"``), ``hint`` says what to do."""
    unclear = float(((values > UNCLEAR_LOW) & (values < UNCLEAR_HIGH)).mean())
    if unclear > MAX_UNCLEAR:
        raise LightsegError(
            f"{what} '{path}' is not a binary mask: {unclear:.0%} of its pixels have values "
            f"between {UNCLEAR_LOW} and {UNCLEAR_HIGH} (values seen: {np.unique(values)[:8]}...). "
            f"{hint}"
        )
    return (values >= BINARY_THRESHOLD).astype(np.uint8)


def at_least(value, minimum: int, key: str) -> int:
    """``value`` as an int >= ``minimum``, or an error naming the config key."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise LightsegError(f"{key}={value!r} must be a whole number >= {minimum}.")
    return int(value)


def stratified_order(samples: Sequence[Sample], seed: int) -> list[Sample]:
    """``samples`` shuffled with ``seed`` so that any prefix keeps the strata proportions.

    Each stratum's shuffled members get evenly spaced positions in [0, 1) and the strata are
    merged by position, so split sizes come out exact for the whole set rather than rounded per
    stratum. The input order does not matter.
    """
    rng = np.random.default_rng(seed)
    keyed = []
    for stratum, members in sorted(by_stratum(samples).items(), key=lambda item: str(item[0])):
        for rank, index in enumerate(rng.permutation(len(members))):
            keyed.append(((rank + 0.5) / len(members), str(stratum), members[index]))
    return [sample for *_, sample in sorted(keyed, key=lambda item: item[:2])]


def by_stratum(samples: Sequence[Sample]) -> dict[str | None, list[Sample]]:
    """The samples of each ``Sample.stratum``, each list sorted by id."""
    strata: dict[str | None, list[Sample]] = defaultdict(list)
    for sample in sorted(samples, key=lambda s: s.id):
        strata[sample.stratum].append(sample)
    return strata


def stratified_split(
    samples: Sequence[Sample], fractions: Mapping[str, float], seed: int
) -> dict[str, list[Sample]]:
    """Shuffle each stratum with ``seed`` and cut it into val/test fractions; the rest is train."""
    val, test = float(fractions.get("val", 0.0)), float(fractions.get("test", 0.0))
    if val < 0 or test < 0 or val + test >= 1:
        raise LightsegError(
            f"data.split fractions val={val} and test={test} must be >= 0 and sum to less than 1."
        )
    ordered = stratified_order(samples, seed)
    n_val, n_test = round(val * len(ordered)), round(test * len(ordered))
    groups = {
        "val": ordered[:n_val],
        "test": ordered[n_val : n_val + n_test],
        "train": ordered[n_val + n_test :],
    }
    return {name: sorted(groups[name], key=lambda s: s.id) for name in SPLITS}


def check_fold(folds, fold) -> int:
    """``data.folds`` as an int >= 2, checked to have a fold number ``data.fold``."""
    folds = at_least(folds, 2, "data.folds")
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise LightsegError(
            f"data.fold={fold!r} must be one of 0..{folds - 1} (data.folds={folds})."
        )
    return folds


def kfold_split(
    samples: Sequence[Sample], folds: int, fold: int, val: float, seed: int
) -> dict[str, list[Sample]]:
    """Test = fold ``fold`` of ``folds`` stratified folds; val = ``val`` of all samples, taken
    stratified from the other folds; the rest trains.

    Every stratum is shuffled with ``seed`` and dealt round-robin onto the folds, the deal
    continuing from one stratum to the next: each stratum is spread evenly over the folds and
    fold sizes differ by at most one. The folds are disjoint and cover every sample once, and
    they do not depend on ``fold``, so ``data.fold=0..folds-1`` tests each sample exactly once.
    """
    folds = check_fold(folds, fold)
    if len(samples) < folds:
        raise LightsegError(
            f"data.folds={folds} needs at least {folds} samples; the dataset has {len(samples)}."
        )
    rng = np.random.default_rng(seed)
    dealt, rest, position = [], [], 0
    for _, members in sorted(by_stratum(samples).items(), key=lambda item: str(item[0])):
        for index in rng.permutation(len(members)):
            (dealt if position % folds == fold else rest).append(members[index])
            position += 1
    n_val = round(float(val) * len(samples))
    if not 0 <= n_val < len(rest):
        raise LightsegError(
            f"data.split.val={val} with data.folds={folds} leaves no training data: the "
            f"validation set is taken from the {len(rest)} samples outside the test fold. Use a "
            "smaller data.split.val."
        )
    inner = stratified_split(rest, {"val": n_val / len(rest)}, seed)
    return {"train": inner["train"], "val": inner["val"], "test": sorted(dealt, key=lambda s: s.id)}


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


def read_pair(source: SegmentationSource, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
    """``source.read(sample)``, checked: image and mask must have the same size."""
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

    Items are tensors, image ``[C, H, W]`` (uint8 for 8-bit data, else float32 in [0, 1]) and
    mask uint8 ``[H, W]``: the model normalises the image and widens the mask on its device
    (``SegmentationModule.on_after_batch_transfer``).
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
        return read_pair(self.source, sample)

    def __getitem__(self, index: int) -> dict:
        image, mask = self.read(index)
        out = self.transform(image=image, mask=mask)
        image = to_unit_range(out["image"])
        return {"image": image, "mask": out["mask"], "id": self.samples[index].id}


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

    ``folds``/``fold`` replace the ``split`` fractions by k-fold cross-validation (the test set
    is fold ``fold``; ``split.val`` still sizes validation). ``mean``/``std`` may be ``auto``:
    per-channel values of the training split, computed once and cached in ``statistics_dir``
    (default ``<source root>/.lightseg``), see :mod:`lightseg.data.statistics`.
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
        mean: Sequence[float] | Literal["auto"] = IMAGENET_MEAN,
        std: Sequence[float] | Literal["auto"] = IMAGENET_STD,
        split_dir: str | Path | None = None,
        pin_memory: bool | None = None,
        global_batch_size: int | None = None,
        cache: bool = False,
        folds: int | None = None,
        fold: int = 0,
        statistics_dir: str | Path | None = None,
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
        self.folds = None if folds is None else check_fold(folds, fold)
        self.fold = fold
        self.mean = mean if mean == AUTO else tuple(mean)
        self.std = std if std == AUTO else tuple(std)
        self.check_normalization()
        self.statistics_dir = Path(statistics_dir) if statistics_dir else None
        self.split_dir = Path(split_dir) if split_dir else None
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.pipelines = {
            "train": build_pipeline(transforms["train"]),
            "eval": build_pipeline(transforms["eval"]),
        }
        self.splits: dict[str, list[Sample]] | None = None
        self.datasets: dict[str, SegmentationDataset] = {}
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
                partial(read_pair, self.source),
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
            samples = self.source.find()
            if self.folds:
                val = float(self.fractions.get("val", 0.0))
                splits = self.source.fold_split(
                    samples, self.folds, self.fold, val, self.split_seed
                )
            else:
                splits = self.source.split(samples, self.fractions, self.split_seed)
            empty = [name for name in SPLITS if not splits.get(name)]
            if empty:
                sizes = {name: len(splits.get(name, [])) for name in SPLITS}
                raise LightsegError(
                    f"{type(self.source).__name__} under '{self.source.root}' gives empty "
                    f"split(s) {empty} (sizes {sizes}). Add data or change data.split (val/test "
                    "fractions)."
                )
            self.splits = splits
        if AUTO in (self.mean, self.std):
            stats = self._training_statistics()
            self.mean = stats.mean if self.mean == AUTO else self.mean
            self.std = stats.std if self.std == AUTO else self.std
            log.info("data.mean=%s data.std=%s (training split)", list(self.mean), list(self.std))
            self.check_normalization()
        return self.splits

    def statistics(self, measured: SplitStatistics | None = None) -> SplitStatistics:
        """Channel mean/std and class frequencies of the training split (computed once and
        cached; ``measured``: already computed by the caller, to be cached)."""
        self.locate()
        return self._training_statistics(measured)

    @property
    def statistics_folder(self) -> Path:
        """Where :meth:`statistics` are cached: ``statistics_dir``, or ``<root>/.lightseg``."""
        return self.statistics_dir or self.source.root / ".lightseg"

    def _training_statistics(self, measured: SplitStatistics | None = None) -> SplitStatistics:
        if self._statistics is None:
            train, folder = self.splits["train"], self.statistics_folder
            self._statistics = training_statistics(self.source, train, folder, measured)
        return self._statistics

    def setup(self, stage: str | None = None) -> None:
        self.locate()
        if self.split_dir is not None and (self.trainer is None or self.trainer.is_global_zero):
            self.write_splits(self.split_dir)

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
            worker_init_fn=init_loader_worker,  # stop signals left to the main process
            **extra,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

"""Training data order and augmentations as pure functions of (seed, epoch, sample).

Nothing here draws from a random stream whose state would have to be saved: the order of an
epoch comes from ``(seed, epoch)`` and each sample's augmentations from ``(seed, epoch, index)``.
Runs are therefore the same whatever ``num_workers`` is, and a run resumed in the middle of an
epoch sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


def mixed_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integers (nearby inputs give unrelated streams)."""
    return int(np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(1)[0])


class EpochSampler(Sampler):
    """Shuffles ``size`` indices anew each epoch; yields ``(index, augmentation seed)`` pairs.

    Lightning calls :meth:`set_epoch` before every epoch (also through its DDP sampler wrapper);
    a plain loop that never does still gets a new order on each pass.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = int(size), int(seed), 0
        self._skip, self._epoch_given, self._passes = 0, False, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._epoch_given = int(epoch), True

    def skip_next(self, count: int) -> None:
        """Start the next pass ``count`` positions into the epoch's order."""
        self._skip = int(count)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self._passes and not self._epoch_given:
            self.epoch += 1
        self._passes, self._epoch_given = self._passes + 1, False
        generator = torch.Generator().manual_seed(mixed_seed(self.seed, self.epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        start, self._skip = self._skip, 0
        return iter([(i, mixed_seed(self.seed, self.epoch, i)) for i in order[start:]])


class SeededAugmentation(Dataset):
    """Seeds a dataset's albumentations pipeline per sample before reading it.

    Keys are ``(index, seed)`` from :class:`EpochSampler`, or plain indices (seeded by index
    alone, e.g. when Lightning swaps in a sequential sampler for ``overfit_batches``).
    One generator pair is shared by all transforms of the pipeline: albumentations' own
    ``Compose(seed=...)`` gives each transform an identical stream, which makes e.g. the
    horizontal and vertical flips always fire together.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, mixed_seed(self.seed, key))
        self.dataset.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return self.dataset[index]


def batches_done_in_epoch(trainer) -> int:
    """Training batches the trainer has already run in its current epoch.

    Read when an epoch's first batch is fetched: zero, except right after a mid-epoch resume.
    """
    if trainer is None or not trainer.training:
        return 0
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


class ResumableDataLoader(DataLoader):
    """A DataLoader that starts each epoch after the batches the trainer says are done.

    The position comes from Lightning's own restored progress (``batches_done``), so there is
    no second copy of it to keep in sync. With an :class:`EpochSampler` the done batches are
    skipped by index (nothing is read); behind another sampler (DDP, overfit) they are read
    and dropped. The iterator is created on the first ``next()``, after Lightning has set the
    epoch, so the first epoch after a resume is ordered like the uninterrupted run's.
    """

    def __init__(self, *args, batches_done: Callable[[], int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def __iter__(self) -> Iterator:
        return self._epoch()

    def _epoch(self) -> Iterator:
        done = self.batches_done() if self.batches_done else 0
        if done and isinstance(self.sampler, EpochSampler) and self.batch_size:
            self.sampler.skip_next(done * self.batch_size)
            done = 0
        yield from itertools.islice(super().__iter__(), done, None)

    # Lightning saves and restores loaders that have these; the position lives in its progress.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

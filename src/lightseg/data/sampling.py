"""Training data order and augmentations as pure functions of (seed, epoch, sample).

No random state needs saving, so runs are the same whatever ``num_workers`` is, and a run
resumed mid-epoch sees exactly the batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


def mixed_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integers (nearby inputs give unrelated streams)."""
    return int(np.random.SeedSequence([int(p) % 2**64 for p in parts]).generate_state(1)[0])


class SeededSampler(Sampler):
    """Yields ``(index, augmentation seed)`` per index of ``sampler``, whose ``generator`` is
    seeded from ``(seed, epoch)`` so a replayed epoch repeats; a repeated index gets a new seed,
    and without :meth:`set_epoch` calls each pass is the next epoch."""

    def __init__(self, sampler: Sampler, seed: int) -> None:
        self.sampler, self.seed, self.epoch = sampler, int(seed), 0
        self._skip, self._epoch_given, self._passes = 0, False, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._epoch_given = int(epoch), True
        if callable(getattr(self.sampler, "set_epoch", None)):
            self.sampler.set_epoch(epoch)

    def skip_next(self, count: int) -> None:
        """Start the next pass ``count`` positions into the epoch's order."""
        self._skip = int(count)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self._passes and not self._epoch_given:
            self.set_epoch(self.epoch + 1)
        self._passes, self._epoch_given = self._passes + 1, False
        if hasattr(self.sampler, "generator"):
            self.sampler.generator = torch.Generator().manual_seed(
                mixed_seed(self.seed, self.epoch)
            )
        seen, keys = Counter(), []
        for index in self.sampler:
            repeat, seen[index] = seen[index], seen[index] + 1
            parts = (self.seed, self.epoch, index) + ((repeat,) if repeat else ())
            keys.append((int(index), mixed_seed(*parts)))
        start, self._skip = self._skip, 0
        return iter(keys[start:])


class SeededAugmentation(Dataset):
    """Seeds a dataset's pipeline per ``(index, seed)`` key (a plain index under Lightning's
    ``overfit_batches`` sampler) with one generator pair for all transforms: albumentations'
    ``Compose(seed=...)`` gives each the same stream, so e.g. both flips would fire together."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, seed = key if isinstance(key, tuple) else (key, mixed_seed(self.seed, key))
        self.dataset.transform.set_random_state(np.random.default_rng(seed), random.Random(seed))
        return self.dataset[index]


def batches_done_in_epoch(trainer) -> int:
    """Training batches already run in the current epoch: non-zero only after a resume."""
    if trainer is None or not trainer.training:
        return 0
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


class ResumableDataLoader(DataLoader):
    """A DataLoader that starts each epoch after the batches Lightning's progress says are done
    (skipped by index behind a :class:`SeededSampler`, else read and dropped)."""

    def __init__(self, *args, batches_done: Callable[[], int] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def __iter__(self) -> Iterator:  # a generator: runs on the first next(), once the epoch is set
        done = self.batches_done() if self.batches_done else 0
        if done and isinstance(self.sampler, SeededSampler) and self.batch_size:
            self.sampler.skip_next(done * self.batch_size)
            done = 0
        yield from itertools.islice(super().__iter__(), done, None)

    # Lightning saves and restores loaders that have these; the position lives in its progress.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EvalDistributedSampler(DistributedSampler):
    """Shards evaluation data across ranks without padding, so no sample is counted twice."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False)
        self.num_samples = len(range(rank, len(dataset), num_replicas))

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

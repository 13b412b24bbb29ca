"""Training data as a pure function of (seed, epoch, sample): order, augmentations, resume skip,
with the default sampler and with any other one the config names."""

from __future__ import annotations

import albumentations as A
import numpy as np
import torch
from hydra.utils import instantiate
from torch.utils.data import (
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from lightseg.data.sampling import (
    ResumableDataLoader,
    SeededAugmentation,
    SeededSampler,
    mixed_seed,
)
from tests.conftest import make_config


def default_sampler(size: int, seed: int) -> SeededSampler:
    """The default training sampler: torch's RandomSampler, seeded per epoch by the wrapper."""
    return SeededSampler(RandomSampler(range(size)), seed)


class Flips(Dataset):
    """Eight 2x2 images (pixel values 4i..4i+3) through random horizontal and vertical flips."""

    def __init__(self) -> None:
        self.transform = A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)])

    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> torch.Tensor:
        image = np.arange(4 * index, 4 * index + 4, dtype=np.uint8).reshape(2, 2)
        return torch.from_numpy(self.transform(image=image)["image"].copy())


def flips_of(image: torch.Tensor, index: int) -> tuple[bool, bool]:
    """(horizontal, vertical) flip applied, read off where the smallest value ended up."""
    row, col = divmod(int(torch.argmin(image)), 2)
    assert int(image.min()) == 4 * index
    return col == 1, row == 1


def test_epoch_order_depends_only_on_seed_and_epoch():
    sampler = default_sampler(10, seed=3)
    first = [i for i, _ in sampler]
    assert sorted(first) == list(range(10))
    sampler.set_epoch(1)
    second = [i for i, _ in sampler]
    assert sorted(second) == list(range(10)) and second != first
    sampler.set_epoch(0)
    assert [i for i, _ in sampler] == first
    assert [i for i, _ in default_sampler(10, seed=4)] != first
    sampler.set_epoch(1)
    assert [i for i, _ in sampler] == second


def test_without_set_epoch_each_pass_is_the_next_epoch():
    sampler, reference = default_sampler(10, seed=3), default_sampler(10, seed=3)
    passes = [list(sampler) for _ in range(3)]
    for epoch, order in enumerate(passes):
        reference.set_epoch(epoch)
        assert order == list(reference)


def test_skip_next_starts_one_pass_later_in_the_same_order():
    sampler = default_sampler(10, seed=3)
    full = list(sampler)
    sampler.set_epoch(0)  # as Lightning does before every epoch
    sampler.skip_next(4)
    assert list(sampler) == full[4:]
    sampler.set_epoch(0)
    assert list(sampler) == full  # only the next pass is shortened


def test_sample_seeds_differ_by_sample_and_epoch():
    assert mixed_seed(1, 0, 5) == mixed_seed(1, 0, 5)
    assert len({mixed_seed(1, e, i) for e in range(3) for i in range(50)}) == 150
    assert mixed_seed(0, 1) != mixed_seed(1, 0)  # no seed + epoch collisions between runs


def test_each_sample_is_augmented_by_its_own_seed_and_flips_are_independent():
    dataset = SeededAugmentation(Flips(), seed=0)
    assert torch.equal(dataset[(3, 12345)], dataset[(3, 12345)])
    combos = {flips_of(dataset[(seed % 8, seed)], seed % 8) for seed in range(40)}
    # albumentations' Compose(seed=...) would give both flips the same stream: only 2 combos
    assert combos == {(False, False), (False, True), (True, False), (True, True)}


def batches(loader) -> list[torch.Tensor]:
    return [batch.clone() for batch in loader]


def test_loader_is_the_same_with_workers_and_resumes_after_done_batches():
    dataset = SeededAugmentation(Flips(), seed=5)

    def loader(done=0, workers=0, sampler=None):
        return ResumableDataLoader(
            dataset,
            batch_size=2,
            sampler=sampler or default_sampler(8, seed=5),
            num_workers=workers,
            batches_done=lambda: done,
        )

    full = batches(loader())
    assert len(full) == 4
    with_workers = batches(loader(workers=2))
    assert all(torch.equal(a, b) for a, b in zip(full, with_workers, strict=True))
    resumed = batches(loader(done=3))
    assert len(resumed) == 1 and torch.equal(resumed[0], full[3])
    # behind another sampler the done batches are read and dropped: same result
    sequential = batches(loader(sampler=SequentialSampler(dataset)))  # plain indices
    replayed = batches(loader(done=2, sampler=SequentialSampler(dataset)))
    assert all(torch.equal(a, b) for a, b in zip(sequential[2:], replayed, strict=True))
    assert len(replayed) == 2
    assert isinstance(loader(), DataLoader) and loader().state_dict() == {}


def test_the_default_order_is_a_permutation_seeded_by_seed_and_epoch():
    sampler = default_sampler(10, seed=3)
    sampler.set_epoch(4)
    generator = torch.Generator().manual_seed(mixed_seed(3, 4))
    expected = torch.randperm(10, generator=generator).tolist()
    assert list(sampler) == [(i, mixed_seed(3, 4, i)) for i in expected]


def test_any_sampler_gets_new_augmentations_each_epoch():
    dataset = SeededAugmentation(Flips(), seed=0)
    sampler = SeededSampler(SequentialSampler(range(8)), seed=0)  # the same order every epoch
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert [index for index, _ in keys] == list(range(8))
        epochs.append([flips_of(dataset[key], key[0]) for key in keys])
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]


def test_repeated_indices_get_their_own_augmentations_and_draws_replay_per_epoch():
    weighted = WeightedRandomSampler([0.0, 1.0, 0.0, 0.0], num_samples=40)  # only index 1
    sampler = SeededSampler(weighted, seed=2)
    keys = list(sampler)
    assert [index for index, _ in keys] == [1] * 40
    assert len({seed for _, seed in keys}) == 40  # a repeat is augmented anew
    assert keys[0] == (1, mixed_seed(2, 0, 1)) and keys[1] == (1, mixed_seed(2, 0, 1, 1))
    even = SeededSampler(WeightedRandomSampler([1.0] * 6, num_samples=12), seed=2)
    even.set_epoch(1)
    first = list(even)
    even.set_epoch(1)
    even.skip_next(5)
    assert list(even) == first[5:]  # an epoch replays exactly: a resume skips by index
    even.set_epoch(2)
    assert list(even) != first


def test_the_sampler_is_a_config_choice(tmp_path, data_dir):
    def loader(*overrides: str) -> ResumableDataLoader:
        cfg = make_config(
            tmp_path,
            "experiment=demo",
            "data.source.num_cases=10",
            "data.num_workers=0",
            "data.split_dir=null",
            *overrides,
            data_dir=data_dir,
        )
        return instantiate(cfg.data, _convert_="all").train_dataloader()

    default = loader()
    assert isinstance(default, ResumableDataLoader) and isinstance(default.sampler, SeededSampler)
    assert isinstance(default.sampler.sampler, RandomSampler)
    assert len(default.sampler.sampler.data_source) == 6  # the training split
    weighted = loader(
        "data.sampler._target_=torch.utils.data.WeightedRandomSampler",
        "+data.sampler.weights=[1,0,0,0,0,0]",
    )
    chosen = weighted.sampler.sampler
    assert isinstance(chosen, WeightedRandomSampler) and chosen.num_samples == 6
    assert [index for index, _ in weighted.sampler] == [0] * 6
    batch = next(iter(weighted))
    assert batch["id"] == [weighted.dataset.dataset.samples[0].id] * len(batch["id"])
    assert len({image.sum().item() for image in batch["image"]}) > 1  # each repeat augmented anew

"""The PH2 reader on a fixture in the archive's exact layout, and its errors."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from lightseg.data import SegmentationDataset
from lightseg.data.ph2 import PH2
from lightseg.errors import LightsegError
from tests.conftest import PH2_CASES, make_config, ph2_arrays


def test_finds_every_case_with_its_diagnosis_and_ignores_roi_folders(ph2_root):
    samples = PH2(ph2_root).find()
    assert [s.id for s in samples] == sorted(PH2_CASES)
    assert {s.id: s.stratum for s in samples} == {
        "IMD002": "common_nevus",
        "IMD003": "common_nevus",
        "IMD009": "atypical_nevus",
        "IMD016": "atypical_nevus",
        "IMD058": "melanoma",
        "IMD061": "melanoma",
    }
    assert all(s.mask.name == f"{s.id}_lesion.bmp" for s in samples)


def test_reads_24_bit_images_and_1_bit_masks_pixel_for_pixel(ph2_root):
    source = PH2(ph2_root)
    for sample in source.find():
        assert Image.open(sample.mask).mode == "1"
        image, mask = source.read(sample)
        expected_image, expected_mask = ph2_arrays(sample.id)
        assert image.dtype == np.uint8 and image.shape == expected_image.shape
        np.testing.assert_array_equal(image, expected_image)
        assert mask.dtype == np.uint8
        np.testing.assert_array_equal(mask, expected_mask.astype(np.uint8))


def test_split_is_stratified_and_deterministic(ph2_root):
    source = PH2(ph2_root)
    fractions = {"val": 1 / 3, "test": 1 / 3}
    first = source.split(source.find(), fractions, seed=3)
    assert source.split(source.find(), fractions, seed=3) == first
    assert {name: len(group) for name, group in first.items()} == {"train": 2, "val": 2, "test": 2}
    for group in first.values():  # at most one case of a diagnosis (2 cases each) per split
        strata = [s.stratum for s in group]
        assert len(set(strata)) == len(strata)
    val_sets = {
        tuple(s.id for s in source.split(source.find(), fractions, seed)["val"])
        for seed in range(8)
    }
    assert len(val_sets) > 1  # the seed matters


def test_datamodule_batches_have_the_promised_shapes_and_dtypes(ph2_root, tmp_path):
    cfg = make_config(
        tmp_path,
        "data=ph2",
        "data.image_size=[64,96]",
        "data.batch_size=2",
        "data.num_workers=0",
        "data.split.val=0.34",
        data_dir=ph2_root.parent,
    )
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup()
    assert (tmp_path / "run" / "splits" / "test.txt").read_text().split() == [
        s.id for s in datamodule.splits["test"]
    ]
    batch = next(iter(datamodule.val_dataloader()))
    # loaders deliver uint8: the model normalises images and widens masks on its device
    assert batch["image"].shape == (2, 3, 64, 96) and batch["image"].dtype == torch.uint8
    assert batch["mask"].shape == (2, 64, 96) and batch["mask"].dtype == torch.uint8
    assert set(batch["mask"].unique().tolist()) == {0, 1}
    # the eval pipeline only resizes: image and mask are the resized files
    image, mask = ph2_arrays(batch["id"][0])
    expected = cv2.resize(mask.astype(np.uint8), (96, 64), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(batch["mask"][0].numpy(), expected)
    expected_image = cv2.resize(image, (96, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(batch["image"][0].permute(1, 2, 0).numpy(), expected_image)


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path):
    with pytest.raises(LightsegError) as error:
        PH2(tmp_path / "nowhere" / "PH2Dataset").find()
    message = str(error.value)
    assert "nowhere/PH2Dataset/PH2 Dataset images" in message
    assert "fc.up.pt" in message and "make train" in message


def test_case_without_mask_is_named(ph2_root):
    mask = ph2_root / "PH2 Dataset images/IMD009/IMD009_lesion/IMD009_lesion.bmp"
    mask.unlink()
    with pytest.raises(LightsegError, match=r"IMD009.*no lesion mask"):
        PH2(ph2_root).find()


def test_unreadable_image_is_named(ph2_root):
    source = PH2(ph2_root)
    sample = source.find()[0]
    sample.image.write_bytes(b"BM this is not a bitmap")
    with pytest.raises(LightsegError, match=re.escape(f"Cannot read image file '{sample.image}'")):
        source.read(sample)


def test_image_and_mask_of_different_size_is_named(ph2_root, tmp_path):
    mask = ph2_root / "PH2 Dataset images/IMD003/IMD003_lesion/IMD003_lesion.bmp"
    Image.new("1", (10, 10)).save(mask)
    source = PH2(ph2_root)
    sample = next(s for s in source.find() if s.id == "IMD003")
    dataset = SegmentationDataset(source, [sample], transform=None)
    with pytest.raises(LightsegError, match=r"IMD003.*differ in size.*10x10"):
        dataset[0]


def test_missing_diagnoses_sheet_still_splits(ph2_root, caplog):
    (ph2_root / "PH2_dataset.xlsx").unlink()
    samples = PH2(ph2_root).find()
    assert len(samples) == 6 and all(s.stratum is None for s in samples)
    assert "not be stratified" in caplog.text

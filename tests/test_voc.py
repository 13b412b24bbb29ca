"""PASCAL VOC 2012 (+SBD): official lists, palette masks read as indices, train_aug, the recipe."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from lightseg.data import voc as voc_module
from lightseg.data.transforms import Normalize
from lightseg.data.voc import VOC, VOC_CLASSES
from lightseg.errors import LightsegError
from tests.conftest import make_config
from tests.fixtures_datasets import (
    SBD_LISTS,
    TRAIN_AUG,
    VOC_LISTS,
    VOC_SIZES,
    voc_label,
    write_sbd,
    write_voc,
)


@pytest.fixture
def voc_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """Fresh VOC and SBD folders per test (tests damage them)."""
    voc = write_voc(tmp_path / "VOCdevkit" / "VOC2012")
    sbd = write_sbd(tmp_path / "benchmark_RELEASE" / "dataset")
    return voc, sbd


def ids(samples) -> list[str]:
    return [s.id for s in samples]


def test_official_lists_and_masks_pixel_for_pixel(voc_dirs):
    source = VOC(voc_dirs[0])
    splits = source.split(source.find(), {"val": 0.5, "test": 0.5}, seed=0)  # fractions unused
    assert ids(splits["train"]) == VOC_LISTS["train"]
    assert ids(splits["val"]) == ids(splits["test"]) == VOC_LISTS["val"]
    for sample in splits["train"] + splits["val"]:
        image, mask = source.read(sample)
        width, height = VOC_SIZES[sample.id]
        assert image.shape == (height, width, 3) and image.dtype == np.uint8
        np.testing.assert_array_equal(mask, voc_label(sample.id))
    # the palette colour of class 15 (person) is (192, 128, 128); the reader must give 15
    stored = Image.open(voc_dirs[0] / "SegmentationClass" / "2007_000032.png")
    assert stored.mode == "P" and stored.getpalette()[15 * 3 : 15 * 3 + 3] == [192, 128, 128]


def test_train_aug_merges_sbd_and_excludes_val(voc_dirs, caplog):
    voc, sbd = voc_dirs
    source = VOC(voc, use_sbd=True, sbd_root=sbd)
    with caplog.at_level("INFO"):
        splits = source.split(source.find(), {}, seed=0)
    assert ids(splits["train"]) == TRAIN_AUG  # 3 VOC + 3 SBD-only; 2007_000033 is VOC val
    assert ids(splits["val"]) == VOC_LISTS["val"]
    assert "train_aug: 6 images" in caplog.text
    for sample in splits["train"]:
        _, mask = source.read(sample)
        from_voc = sample.id in VOC_LISTS["train"]  # VOC's own mask, with its 255 borders
        assert sample.mask.suffix == (".png" if from_voc else ".mat")
        np.testing.assert_array_equal(mask, voc_label(sample.id, borders=from_voc))
    assert set(SBD_LISTS["train"]) & set(VOC_LISTS["val"])  # the fixture does test the exclusion


def test_default_sbd_root_sits_next_to_vocdevkit(voc_dirs):
    source = VOC(voc_dirs[0], use_sbd=True)
    assert ids(source.split(source.find(), {}, 0)["train"]) == TRAIN_AUG


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(LightsegError, match=r"VOC2012.*lightseg.data.download data=voc"):
        VOC(tmp_path / "VOCdevkit" / "VOC2012").find()


def test_list_naming_a_missing_image(voc_dirs):
    (voc_dirs[0] / "JPEGImages" / "2007_000039.jpg").unlink()
    with pytest.raises(LightsegError, match=r"train\.txt' lists '2007_000039'.*2007_000039\.jpg"):
        VOC(voc_dirs[0]).find()


def test_unknown_list_name(voc_dirs):
    with pytest.raises(LightsegError, match=r"train_aug.*\['train', 'trainval', 'val'\]"):
        VOC(voc_dirs[0], splits={"train": "train_aug", "val": "val", "test": "val"}).find()


def test_sbd_missing_with_use_sbd(voc_dirs):
    shutil.rmtree(voc_dirs[1])
    with pytest.raises(LightsegError, match=r"use_sbd=true.*benchmark_RELEASE/dataset/cls"):
        VOC(voc_dirs[0], use_sbd=True, sbd_root=voc_dirs[1]).find()


def out_of_range(path: Path) -> None:
    label = voc_label("2007_000033")
    label[0, :3] = (21, 22, 200)
    Image.fromarray(label).save(path)


def as_rgb(path: Path) -> None:
    Image.open(path).convert("RGB").save(path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [(out_of_range, r"holds the value\(s\) \[21, 22, 200\]"), (as_rgb, "is a RGB image")],
)
def test_damaged_palette_mask_names_the_file(voc_dirs, damage, message):
    damage(voc_dirs[0] / "SegmentationClass" / "2007_000033.png")
    source = VOC(voc_dirs[0])
    sample = next(s for s in source.find() if s.id == "2007_000033")
    with pytest.raises(LightsegError, match=rf"2007_000033\.png' {message}"):
        source.read(sample)


def test_damaged_sbd_mat(voc_dirs):
    path = voc_dirs[1] / "cls" / "2008_000002.mat"
    path.write_bytes(b"not a mat file")
    source = VOC(voc_dirs[0], use_sbd=True, sbd_root=voc_dirs[1])
    sample = next(s for s in source.find() if s.id == "2008_000002")
    with pytest.raises(LightsegError, match=r"Cannot read SBD mask '.*2008_000002\.mat'"):
        source.read(sample)


def test_recipe_pads_with_ignore_and_batches_mixed_sizes(tmp_path, voc_dirs):
    cfg = make_config(
        tmp_path,
        "data=voc",
        "data.image_size=[64,64]",
        "data.batch_size=2",
        "data.num_workers=0",
        f"paths.data_dir={tmp_path}",
    )
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup()
    # evaluation: images of different sizes pad to 64x64 at the bottom/right with 255
    batch = next(iter(datamodule.val_dataloader()))
    assert batch["image"].shape == (2, 3, 64, 64) and batch["mask"].dtype == torch.uint8
    for mask, image_id in zip(batch["mask"], batch["id"], strict=True):
        width, height = VOC_SIZES[image_id]
        expected = np.full((64, 64), 255)
        expected[:height, :width] = voc_label(image_id)
        np.testing.assert_array_equal(mask.numpy(), expected)
    # the padded image area is the ImageNet mean colour: ~0 after normalisation
    assert batch["image"][0, :, 63, 63].tolist() == [124, 116, 104]
    normalised = Normalize(datamodule.mean, datamodule.std)(batch["image"])
    assert normalised[0, :, 63, 63].abs().max() < 0.01
    # training: every crop is 64x64 and holds only class indices or 255
    train = datamodule.dataset("train")
    for index in range(len(train)):
        item = train[index]
        assert item["image"].shape == (3, 64, 64) and item["mask"].shape == (64, 64)
        allowed = {0, 255, *np.unique(voc_label(item["id"])).tolist()}
        assert set(item["mask"].unique().tolist()) <= allowed


def test_recipe_scale_range_and_shrink_only_eval(tmp_path):
    cfg = make_config(tmp_path, "data=voc", "data.image_size=[64,64]")
    scale, pad, crop, flip = instantiate(cfg.data.transforms.train)
    assert scale.scale_limit == (-0.5, 1.0)  # factors 0.5..2.0
    assert (pad.fill_mask, crop.height, flip.p) == (255, 64, 0.5)
    shrink, _ = instantiate(cfg.data.transforms.eval)
    large = shrink(image=np.zeros((128, 96, 3), np.uint8), mask=np.zeros((128, 96), np.uint8))
    small = shrink(image=np.zeros((40, 50, 3), np.uint8), mask=np.zeros((40, 50), np.uint8))
    assert large["image"].shape[:2] == (64, 48) and large["mask"].shape == (64, 48)
    assert small["image"].shape[:2] == (40, 50)  # never enlarged


def test_class_names():
    assert len(VOC_CLASSES) == 21 and VOC_CLASSES[15] == "person" and VOC_CLASSES[20] == "tvmonitor"


def test_train_aug_size_is_checked_against_the_full_releases(voc_dirs, monkeypatch, caplog):
    # pretend the fixture's lists are the full releases (3 train, 2 val), expecting 7 merged
    monkeypatch.setitem(voc_module.FULL_SIZES, "train", 3)
    monkeypatch.setitem(voc_module.FULL_SIZES, "val", 2)
    monkeypatch.setitem(voc_module.FULL_SIZES, "train_aug", 7)
    with caplog.at_level("WARNING"):
        VOC(voc_dirs[0], use_sbd=True, sbd_root=voc_dirs[1]).find()
    assert "train_aug has 6 images; the full VOC 2012 + SBD releases give 7" in caplog.text
    caplog.clear()
    monkeypatch.setitem(voc_module.FULL_SIZES, "train_aug", 6)
    with caplog.at_level("WARNING"):
        VOC(voc_dirs[0], use_sbd=True, sbd_root=voc_dirs[1]).find()
    assert "train_aug has" not in caplog.text


def test_splits_must_map_every_split():
    with pytest.raises(LightsegError, match=r"names no subset for \['test'\]"):
        VOC("VOCdevkit/VOC2012", splits={"train": "train", "val": "val"})

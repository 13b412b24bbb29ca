"""MADS (Kaggle): nested or flat layout, df.csv pairing, mask encodings checked at load."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lightseg.data.mads import MADS, binarise
from lightseg.errors import LightsegError
from tests.fixtures_datasets import (
    MADS_FOLDER,
    MADS_FRAMES,
    mads_label,
    mads_stored_mask,
    write_mads,
    write_mads_folder,
)


def test_nested_layout_pixel_for_pixel(tmp_path):
    root = write_mads(tmp_path / "mads")
    source = MADS(root)
    assert source.folder() == root / MADS_FOLDER / MADS_FOLDER
    samples = source.find()
    assert [s.image.name for s in samples] == MADS_FRAMES  # df.csv order
    for sample in samples:
        image, mask = source.read(sample)
        assert image.shape == (36, 48, 3)
        np.testing.assert_array_equal(mask, mads_label(sample.image.name))
        assert sample.stratum == sample.id.split("_")[0]


def test_shallowest_folder_wins_and_flat_layout_pairs_by_name(tmp_path):
    root = tmp_path / "mads"
    write_mads_folder(root / MADS_FOLDER, with_table=False)
    (root / MADS_FOLDER / "masks" / MADS_FRAMES[0]).rename(root / "spare.png")
    write_mads_folder(root / MADS_FOLDER / MADS_FOLDER)  # a deeper, complete copy is ignored
    (root / MADS_FOLDER / "images" / MADS_FRAMES[0]).unlink()
    source = MADS(root)
    assert source.folder() == root / MADS_FOLDER
    assert [s.image.name for s in source.find()] == sorted(MADS_FRAMES[1:])


def test_unzipped_straight_into_the_root(tmp_path):
    write_mads_folder(tmp_path / "mads", with_table=False)
    assert len(MADS(tmp_path / "mads").find()) == len(MADS_FRAMES)


def test_split_is_deterministic_and_stratified(tmp_path):
    source = MADS(write_mads(tmp_path / "mads"))
    first = source.split(source.find(), {"val": 0.15, "test": 0.15}, seed=3)
    again = source.split(source.find(), {"val": 0.15, "test": 0.15}, seed=3)
    assert first == again
    assert {k: len(v) for k, v in first.items()} == {"train": 6, "val": 1, "test": 1}


def test_image_without_mask_names_both_files(tmp_path):
    root = tmp_path / "mads"
    folder = write_mads_folder(root, with_table=False)
    (folder / "masks" / "Jazz_Jazz1_C0_00010.png").unlink()
    with pytest.raises(LightsegError, match=r"Jazz_Jazz1_C0_00010\.png' has no mask: expected '"):
        MADS(root).find()


def test_missing_dataset_says_where_and_how(tmp_path):
    with pytest.raises(LightsegError, match=r"MADS not found.*mads.*kaggle datasets download"):
        MADS(tmp_path / "mads").find()


def test_images_without_a_masks_folder_name_the_missing_folder(tmp_path):
    folder = write_mads(tmp_path / "mads") / MADS_FOLDER / MADS_FOLDER
    shutil.rmtree(folder / "masks")
    with pytest.raises(LightsegError) as error:
        MADS(tmp_path / "mads").find()
    message = str(error.value)
    assert f"'{folder / 'masks'}' does not exist next to '{folder / 'images'}'" in message
    assert "MADS not found" not in message  # the images were found


def test_df_csv_without_the_columns(tmp_path):
    folder = write_mads_folder(tmp_path / "mads")
    (folder / "df.csv").write_text("image,label\na.png,b.png\n")
    with pytest.raises(LightsegError, match=r"df\.csv' should have the columns 'images' and"):
        MADS(tmp_path / "mads").find()


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (np.array([[0, 1], [1, 0]], np.uint8), [[0, 1], [1, 0]]),  # 0/1 index mask
        (np.array([[0, 255], [255, 0]], np.uint8), [[0, 1], [1, 0]]),  # 0/255
        # threshold at 128; 2 of 40 pixels (5%) in the unclear band 33..222 are tolerated
        (np.array([[0] * 19 + [127, 128] + [250] * 19], np.uint8), [[0] * 20 + [1] * 20]),
        (np.array([[[0, 0, 0], [0, 255, 0]]], np.uint8), [[0, 1]]),  # RGB: brightest channel
        (np.array([[True, False]]), [[1, 0]]),  # 1-bit PNGs load as bool
    ],
)
def test_binarise_rules(stored, expected):
    np.testing.assert_array_equal(binarise(stored, Path("m.png")), np.array(expected, np.uint8))


def test_fixture_masks_have_soft_edges_that_binarise():
    stored = mads_stored_mask(MADS_FRAMES[0])[..., 0]
    assert {0, 100, 180, 255} == set(np.unique(stored).tolist())
    np.testing.assert_array_equal(binarise(stored, Path("m.png")), mads_label(MADS_FRAMES[0]))


def test_mask_with_unexpected_values_names_the_file(tmp_path):
    folder = write_mads_folder(tmp_path / "mads")
    name = MADS_FRAMES[2]
    ramp = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (36, 1))  # e.g. a photo or a matte
    Image.fromarray(ramp).save(folder / "masks" / name)
    source = MADS(tmp_path / "mads")
    sample = next(s for s in source.find() if s.image.name == name)
    with pytest.raises(LightsegError, match=rf"MADS mask '.*{name}' is not a binary mask: 73%"):
        source.read(sample)

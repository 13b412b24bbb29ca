"""data=folder: your own images and masks, each mask encoding, split lists, CSV, bad input."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image

from lightseg import CONFIG_DIR
from lightseg.data import download
from lightseg.data.folder import Folder
from lightseg.data.source import read_pair
from lightseg.errors import LightsegError
from lightseg.tools.eval import evaluate
from lightseg.train import train
from tests.conftest import ONE_STEP, make_config
from tests.fixtures_datasets import FOLDER_CASES, folder_label, write_folder
from tests.runs import run_app, run_cli

#: Colour masks: class colours in class order, and the colour of ignored pixels.
PALETTE = {"background": (0, 0, 0), "road": (128, 64, 128), "car": (0, 0, 142)}
IGNORE = (255, 255, 255)
TRAIN_FAST = (*ONE_STEP, "model=unet_resnet18", "data.image_size=32", "print_config=false")


@pytest.fixture
def photos(tmp_path) -> Path:
    """JPEG photos and same-stem 0/255 PNG masks, as a user has them."""
    return write_folder(tmp_path / "photos")


def street_label(seed: int, height: int = 32, width: int = 40) -> np.ndarray:
    """Class indices 0..2 (background, road, car) with a band of 255 (ignore)."""
    label = np.zeros((height, width), np.uint8)
    label[height // 2 :, :] = 1  # road: the lower half
    label[4 + seed % 8 : 12 + seed % 8, 5:20] = 2  # a car
    label[:, width - 3 :] = 255  # ignored border
    return label


def write_street(root: Path, count: int = 8) -> Path:
    """RGB colour masks (road, car, ignore colour) next to PNG photos."""
    colours = np.zeros((256, 3), np.uint8)
    colours[: len(PALETTE)] = list(PALETTE.values())
    colours[255] = IGNORE
    for seed in range(count):
        label = street_label(seed)
        image = np.random.default_rng(seed).integers(0, 256, (*label.shape, 3), dtype=np.uint8)
        save(root / "images" / f"street_{seed}.png", image)
        save(root / "masks" / f"street_{seed}.png", colours[label])
    return root


def street_args() -> dict:
    return {
        "classes": list(PALETTE),
        "palette": [list(c) for c in PALETTE.values()],
        "ignore_color": list(IGNORE),
    }


def save(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values).save(path)
    return path


def palette_png(path: Path, values: np.ndarray) -> Path:
    """A palette PNG whose pixels are ``values`` (indices) and whose colours are arbitrary."""
    image = Image.new("P", (values.shape[1], values.shape[0]))
    image.putdata(values.flatten().tolist())
    image.putpalette([v for i in range(256) for v in ((37 * i) % 256, 200, 255 - i)])
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def pairs(root: Path, masks: dict[str, np.ndarray], image_value: int = 90) -> Path:
    """One PNG image per mask (PNG masks, same stem); images are flat gray RGB."""
    for name, mask in masks.items():
        save(root / "images" / f"{name}.png", np.full((*mask.shape[:2], 3), image_value, np.uint8))
        save(root / "masks" / f"{name}.png", mask)
    return root


def box(value: int = 255, shape=(16, 20)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[2:8, 3:10] = value
    return mask


# --- pairing and reading ---------------------------------------------------------------------


def test_jpeg_photos_pair_with_same_stem_png_masks_and_0_255_masks_read_as_0_1(photos):
    source = Folder(photos)
    samples = source.find()
    assert [s.id for s in samples] == sorted(FOLDER_CASES)
    assert all(s.image.suffix == ".jpg" and s.mask.suffix == ".png" for s in samples)
    assert source.describe_masks().startswith("binary 0/255 masks (foreground = value >= 128)")
    for sample in samples:
        image, mask = source.read(sample)
        width, height, _, _ = FOLDER_CASES[sample.id]
        assert image.dtype == np.uint8 and image.shape == (height, width, 3)
        np.testing.assert_array_equal(image, np.asarray(Image.open(sample.image)))
        np.testing.assert_array_equal(mask, folder_label(sample.id))


def test_mask_pattern_subfolders_and_any_extension(tmp_path):
    root = tmp_path / "data"
    label = box(1)
    for sub, name, suffix in (
        ("site_a", "x1", ".jpeg"),
        ("site_b", "x2", ".bmp"),
        ("", "x3", ".tif"),
    ):
        save(root / "images" / sub / f"{name}{suffix}", np.full((16, 20, 3), 90, np.uint8))
        save(root / "labels" / sub / f"{name}_mask.png", label)
    save(root / "images" / ".ipynb_checkpoints" / "x9.png", np.zeros((4, 4), np.uint8))  # hidden
    (root / "images" / "notes.txt").write_text("not an image")

    source = Folder(root, masks="labels", mask_pattern="{stem}_mask")
    samples = source.find()
    assert [s.id for s in samples] == ["site_a/x1", "site_b/x2", "x3"]
    assert [s.mask.name for s in samples] == ["x1_mask.png", "x2_mask.png", "x3_mask.png"]
    for sample in samples:
        np.testing.assert_array_equal(source.read(sample)[1], label)


def test_0_1_masks_keep_255_as_ignore_and_palette_pngs_are_indices(tmp_path):
    root = tmp_path / "data"
    label = box(1)
    label[12:, :] = 255
    pairs(root, {"a": label})  # grayscale 0/1/255
    save(root / "images" / "b.png", np.zeros((16, 20, 3), np.uint8))
    palette_png(root / "masks" / "b.png", label)  # palette PNG, the same indices
    assert Image.open(root / "masks" / "b.png").mode == "P"
    source = Folder(root)
    samples = source.find()
    assert source.describe_masks().startswith("binary 0/1 masks (1 = foreground, 255 = ignore)")
    for sample in samples:
        np.testing.assert_array_equal(source.read(sample)[1], label)


def test_0_255_masks_saved_as_jpeg_are_thresholded_at_128(tmp_path):
    root = pairs(tmp_path / "data", {"a": box(255, (32, 32))})
    (root / "masks" / "a.png").unlink()
    Image.fromarray(box(255, (32, 32))).save(root / "masks" / "a.jpg", quality=75)
    stored = np.asarray(Image.open(root / "masks" / "a.jpg"))
    assert len(np.unique(stored)) > 2  # JPEG noise
    source = Folder(root)
    (sample,) = source.find()
    np.testing.assert_array_equal(source.read(sample)[1], (stored >= 128).astype(np.uint8))


def test_index_masks_with_named_classes(tmp_path):
    root = tmp_path / "data"
    for seed in range(3):
        label = street_label(seed)
        save(root / "images" / f"{seed}.png", np.zeros((*label.shape, 3), np.uint8))
        if seed:
            palette_png(root / "masks" / f"{seed}.png", label)
        else:
            save(root / "masks" / f"{seed}.png", label)
    source = Folder(root, classes=["background", "road", "car"])
    assert source.describe_masks() == "index masks, values 0..2 (255 = ignore)"
    for seed, sample in enumerate(source.find()):
        np.testing.assert_array_equal(source.read(sample)[1], street_label(seed))


def test_rgb_colour_masks_map_through_the_palette(tmp_path):
    source = Folder(write_street(tmp_path / "street"), **street_args())
    for sample in source.find():
        seed = int(sample.id.split("_")[1])
        np.testing.assert_array_equal(source.read(sample)[1], street_label(seed))


def test_with_a_palette_palette_pngs_are_read_by_their_colours(tmp_path):
    label = street_label(0)
    indices = np.where(label == 255, 7, 2 - np.minimum(label, 2)).astype(np.uint8)  # shuffled
    colours = {0: (0, 0, 142), 1: (128, 64, 128), 2: (0, 0, 0), 7: IGNORE}  # index -> colour
    image = Image.new("P", (label.shape[1], label.shape[0]))
    image.putdata(indices.flatten().tolist())
    image.putpalette([v for i in range(256) for v in colours.get(i, (9, 9, 9))])
    root = tmp_path / "data"
    save(root / "images" / "a.png", np.zeros((*label.shape, 3), np.uint8))
    (root / "masks").mkdir()
    image.save(root / "masks" / "a.png")
    source = Folder(root, **street_args())
    np.testing.assert_array_equal(source.read(source.find()[0])[1], label)


def test_a_gray_mask_stored_as_rgb_is_read_as_its_values(tmp_path):
    root = pairs(tmp_path / "data", {"a": np.repeat(box(255)[..., None], 3, axis=-1)})
    source = Folder(root)
    (sample,) = source.find()
    np.testing.assert_array_equal(source.read(sample)[1], box(1))


def test_grayscale_and_16_bit_images_have_one_channel(tmp_path):
    root = tmp_path / "data"
    gray = np.arange(16 * 20, dtype=np.uint8).reshape(16, 20)
    deep = (np.arange(16 * 20, dtype=np.uint16) * 130).reshape(16, 20)
    save(root / "images" / "a.png", gray)
    save(root / "images" / "b.png", deep)  # 16-bit grayscale PNG
    tifffile.imwrite(root / "images" / "c.tif", deep)
    for name in "abc":
        save(root / "masks" / f"{name}.png", box(1))
    source = Folder(root, in_channels=1)
    images = [source.read(s)[0] for s in source.find()]
    assert [(i.dtype, i.shape) for i in images] == [(np.uint8, (16, 20, 1))] + 2 * [
        (np.uint16, (16, 20, 1))
    ]
    for image, expected in zip(images, (gray, deep, deep), strict=True):
        np.testing.assert_array_equal(image[..., 0], expected)


@pytest.mark.parametrize(("bands", "planar"), [(4, False), (13, True)])
def test_multiband_tiff_with_bands_last_or_first(tmp_path, bands, planar):
    root = tmp_path / "data"
    pixels = np.random.default_rng(bands).integers(0, 10000, (18, 22, bands), dtype=np.uint16)
    (root / "images").mkdir(parents=True)
    stored = np.moveaxis(pixels, -1, 0) if planar else pixels  # GDAL writes bands first
    layout = "separate" if planar else "contig"
    tifffile.imwrite(
        root / "images" / "scene.tif", stored, photometric="minisblack", planarconfig=layout
    )
    label = box(1, (18, 22))
    (root / "masks").mkdir()
    tifffile.imwrite(root / "masks" / "scene.tif", label)
    source = Folder(root, in_channels=bands)
    (sample,) = source.find()
    image, mask = source.read(sample)
    np.testing.assert_array_equal(image, pixels)
    np.testing.assert_array_equal(mask, label)


# --- splits: lists, CSV, generated -----------------------------------------------------------


def datamodule(root: Path, tmp_path: Path, *overrides: str):
    cfg = make_config(
        tmp_path, "data=folder", f"data.source.root={root}", "data.split_dir=null", *overrides
    )
    return instantiate(cfg.data, _convert_="all")


def ids(splits) -> dict[str, list[str]]:
    return {name: [s.id for s in group] for name, group in splits.items()}


def test_split_lists_decide_the_splits(photos, tmp_path):
    (photos / "splits").mkdir()
    (photos / "splits" / "train.txt").write_text(
        "case_001\ncase_002.jpg\nimages/case_003.jpg\ncase_004\n\n# a comment\ncase_005\n"
    )
    (photos / "splits" / "val.txt").write_text("case_006\ncase_007\n")
    (photos / "splits" / "test.txt").write_text("case_008\ncase_009\n")  # case_010: unused
    splits = datamodule(photos, tmp_path).locate()
    assert ids(splits) == {
        "train": ["case_001", "case_002", "case_003", "case_004", "case_005"],
        "val": ["case_006", "case_007"],
        "test": ["case_008", "case_009"],
    }


def test_without_a_val_list_validation_comes_from_train(photos, tmp_path):
    (photos / "splits").mkdir()
    train_ids = [f"case_{i:03d}" for i in range(1, 9)]
    (photos / "splits" / "train.txt").write_text("\n".join(train_ids))
    (photos / "splits" / "test.txt").write_text("case_009\ncase_010\n")
    splits = ids(datamodule(photos, tmp_path, "data.split.val=0.25").locate())
    assert splits["test"] == ["case_009", "case_010"]
    assert len(splits["val"]) == 2 and len(splits["train"]) == 6  # 25% of the train list
    assert sorted(splits["train"] + splits["val"]) == train_ids


def write_csv(root: Path, rows: list[dict]) -> Path:
    with open(root / "pairs.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "pairs.csv"


def test_csv_with_split_and_stratum_columns(photos, tmp_path):
    for path in (photos / "masks").iterdir():  # the CSV pairs any names
        path.rename(photos / "masks" / f"label_{path.name}")
    split_of = {1: "train", 2: "train", 3: "train", 4: "train", 5: "val", 6: "val", 7: "test"}
    rows = [
        {
            "image": f"images/case_{i:03d}.jpg",
            "mask": f"masks/label_case_{i:03d}.png",
            "split": split_of.get(i, "TEST"),
            "stratum": "a" if i % 2 else "b",
        }
        for i in range(1, 11)
    ]
    write_csv(photos, rows)
    splits = datamodule(photos, tmp_path, "data.source.csv=pairs.csv").locate()
    assert ids(splits) == {
        "train": [f"images/case_{i:03d}" for i in (1, 2, 3, 4)],
        "val": ["images/case_005", "images/case_006"],
        "test": [f"images/case_{i:03d}" for i in (7, 8, 9, 10)],
    }
    assert splits["train"][0].mask.name == "label_case_001.png"
    assert [s.stratum for s in splits["train"]] == ["a", "b", "a", "b"]


def test_csv_without_split_column_gives_a_split_stratified_by_its_stratum(photos, tmp_path):
    rows = [
        {
            "image": f"images/case_{i:03d}.jpg",
            "mask": f"masks/case_{i:03d}.png",
            "stratum": "big" if i <= 5 else "small",
        }
        for i in range(1, 11)
    ]
    write_csv(photos, rows)
    splits = datamodule(photos, tmp_path, "data.source.csv=pairs.csv").locate()
    for name, expected in (("val", 2), ("test", 2), ("train", 6)):
        assert Counter(s.stratum for s in splits[name]) == {
            "big": expected // 2,
            "small": expected // 2,
        }


# --- k-fold cross-validation on a folder -----------------------------------------------------


def test_k_fold_test_folds_are_disjoint_and_cover_the_folder_once(photos, tmp_path):
    tests = []
    for fold in range(5):
        overrides = ("data.split.folds=5", f"data.split.fold={fold}")
        splits = ids(datamodule(photos, tmp_path, *overrides).locate())
        assert len(splits["test"]) == 2 and len(splits["val"]) == 2 and len(splits["train"]) == 6
        assert not set(splits["test"]) & set(splits["val"] + splits["train"])
        tests += splits["test"]
    assert sorted(tests) == sorted(FOLDER_CASES)


def test_k_fold_is_refused_with_split_lists(photos, tmp_path):
    (photos / "splits").mkdir()
    (photos / "splits" / "train.txt").write_text("case_001\ncase_002\n")
    (photos / "splits" / "test.txt").write_text("case_003\n")
    with pytest.raises(
        LightsegError, match=r"fixed splits \(test, train\).*remove the split lists"
    ):
        datamodule(photos, tmp_path, "data.split.folds=5").locate()


# --- bad input: one clear paragraph each ----------------------------------------------------


def test_unpaired_images_and_masks_are_listed_with_the_pattern(photos):
    (photos / "masks" / "case_003.png").unlink()
    (photos / "masks" / "case_004.png").rename(photos / "masks" / "case_004_mask.png")
    with pytest.raises(LightsegError) as error:
        Folder(photos).find()
    message = str(error.value)
    assert "2 image(s) without a mask: images/case_003.jpg, images/case_004.jpg" in message
    assert "1 mask(s) without an image: masks/case_004_mask.png" in message
    assert "must be 'masks/<name>.<ext>' (data.source.mask_pattern='{stem}'" in message


def test_mixed_mask_encodings_name_both_files(tmp_path):
    root = pairs(tmp_path / "data", {"a": box(255), "b": box(1)})
    source = Folder(root)
    samples = source.find()
    with pytest.raises(LightsegError) as error:
        source.read(samples[1])
    message = str(error.value)
    assert "Mixed mask encodings" in message and str(samples[1].mask) in message
    assert f"but '{samples[0].mask}' made this dataset's masks 0/255" in message


def test_a_colour_not_in_the_palette_is_named_with_its_share(tmp_path):
    root = write_street(tmp_path / "street", count=2)
    mask_path = root / "masks" / "street_1.png"
    mask = np.asarray(Image.open(mask_path)).copy()
    mask[:4, :4] = (10, 200, 10)  # 16 of 1280 pixels
    save(mask_path, mask)
    source = Folder(root, **street_args())
    samples = source.find()
    with pytest.raises(LightsegError) as error:
        source.read(samples[1])
    message = str(error.value)
    assert f"Mask '{mask_path}' has 1 colour(s) that are not in data.source.palette" in message
    assert "[10, 200, 10] (1.2% of pixels)" in message and "ignore_color" in message


def test_a_colour_mask_without_a_palette_says_to_set_one(tmp_path):
    source = Folder(write_street(tmp_path / "street", count=2), classes=list(PALETTE))
    with pytest.raises(LightsegError, match=r"is a colour image \(colours \[0, 0, 0\].*palette"):
        source.read(source.find()[0])


def test_an_index_out_of_range_names_file_value_and_fix(tmp_path):
    label = street_label(0)
    label[0, 0] = 7
    source = Folder(pairs(tmp_path / "data", {"a": label}), classes=list(PALETTE))
    with pytest.raises(LightsegError, match=r"holds the value\(s\) \[7\].*names 3 classes"):
        source.read(source.find()[0])


def test_a_soft_matte_is_not_a_binary_mask(tmp_path):
    matte = np.tile(np.linspace(0, 255, 20).astype(np.uint8), (16, 1))  # a smooth ramp
    source = Folder(pairs(tmp_path / "data", {"a": matte}))
    with pytest.raises(LightsegError, match=r"Mask '.*a.png' is not a binary mask: 70% of its"):
        source.read(source.find()[0])


def test_small_values_in_a_two_class_mask_ask_for_the_classes(tmp_path):
    label = street_label(0)
    label[label == 255] = 0
    with pytest.raises(LightsegError, match=r"class indices of 3 classes.*data\.source\.classes"):
        Folder(pairs(tmp_path / "data", {"a": label})).find()


def test_a_mask_of_another_size_is_named(photos):
    save(photos / "masks" / "case_002.png", np.zeros((10, 12), np.uint8))
    source = Folder(photos)
    sample = next(s for s in source.find() if s.id == "case_002")
    with pytest.raises(
        LightsegError, match=r"case_002.png' is 12x10 pixels but its image .* 42x32"
    ):
        read_pair(source, sample)  # as training, make data and eval read every pair


def test_an_empty_folder_and_a_missing_root_say_what_to_put_where(tmp_path):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "masks").mkdir()
    with pytest.raises(LightsegError, match=r"No images in '.*data/images': found no file ending"):
        Folder(tmp_path / "data").find()
    with pytest.raises(LightsegError, match=r"data\.source\.root='.*nowhere' does not exist"):
        Folder(tmp_path / "nowhere").find()
    (tmp_path / "data" / "masks").rmdir()  # images but no masks: the masks are named
    save(tmp_path / "data" / "images" / "a.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(LightsegError, match=r"'.*data/masks' does not exist.*data\.source\.masks="):
        Folder(tmp_path / "data").find()


def test_a_csv_naming_a_missing_file_names_the_line(photos):
    rows = [{"image": "images/case_001.jpg", "mask": "masks/case_001.png"}]
    rows.append({"image": "images/case_002.jpg", "mask": "masks/gone.png"})
    write_csv(photos, rows)
    with pytest.raises(
        LightsegError, match=r"pairs.csv' line 3: the mask 'masks/gone.png' does not"
    ):
        Folder(photos, csv="pairs.csv").find()


def test_a_channel_count_that_differs_between_images_is_named(photos):
    gray = photos / "images" / "case_004.jpg"
    Image.open(gray).convert("L").save(gray)
    source = Folder(photos)
    samples = source.find()  # the first image is RGB, as data.source.in_channels says
    with pytest.raises(LightsegError) as error:
        source.read(next(s for s in samples if s.id == "case_004"))
    message = str(error.value)
    assert f"Image '{gray}' has 1 channel(s) (grayscale), but data.source.in_channels=3" in message
    assert "every image must have the same number of channels" in message


def test_bad_split_lists_are_named(photos):
    (photos / "splits").mkdir()
    lists = photos / "splits"
    (lists / "train.txt").write_text("case_001\ncase_00X\n")
    (lists / "test.txt").write_text("case_002\n")
    with pytest.raises(
        LightsegError, match=r"train.txt' names samples that were not found: line 2"
    ):
        Folder(photos).find()
    (lists / "train.txt").write_text("case_001\ncase_002\n")
    with pytest.raises(LightsegError, match=r"'case_002' is listed in both train.txt and test.txt"):
        Folder(photos).find()
    (lists / "test.txt").unlink()
    with pytest.raises(LightsegError, match=r"needs test.txt \(val.txt is optional"):
        Folder(photos).find()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"classes": ["background"]}, r"must name at least two different classes"),
        ({"classes": ["a", "b"], "palette": [[0, 0, 0]]}, r"palette has 1 colours for 2 classes"),
        ({"palette": [[0, 0, 0], [0, 0, 300]]}, r"is not a colour; write \[red, green, blue\]"),
        ({"mask_pattern": "mask"}, r"mask_pattern='mask' must contain \{stem\} once"),
        ({"in_channels": 0}, r"data.source.in_channels=0 must be a whole number >= 1"),
    ],
)
def test_bad_settings_are_named(tmp_path, options, message):
    with pytest.raises(LightsegError, match=message):
        Folder(tmp_path, **options)


# --- training, as users run it ---------------------------------------------------------------


def test_a_folder_of_photos_trains_with_data_folder_and_its_root(photos, tmp_path, monkeypatch):
    run_cli(
        monkeypatch,
        "data=folder",
        f"data.source.root={photos}",
        *TRAIN_FAST,
        f"paths.log_dir={tmp_path / 'logs'}",
    )
    (run,) = (tmp_path / "logs" / "default" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test/iou_foreground"] <= 1.0 and "test/iou_background" in metrics
    assert (run / "splits" / "test.txt").read_text().split()[0].startswith("case_")


def street_config(tmp_path: Path, *overrides: str):
    """The colour-mask folder as a user configures it on the command line."""
    root = write_street(tmp_path / "street")
    return make_config(
        tmp_path,
        "data=folder",
        f"data.source.root={root}",
        "data.source.classes=[background,road,car]",
        "data.source.palette=[[0,0,0],[128,64,128],[0,0,142]]",
        "data.source.ignore_color=[255,255,255]",
        "metrics=multiclass",
        *TRAIN_FAST,
        *overrides,
    )


def test_colour_masks_train_multiclass_under_the_users_class_names(tmp_path):
    metrics = train(street_config(tmp_path))
    for name in ("iou_background", "iou_road", "iou_car", "dice_car"):
        assert f"val/{name}" in metrics and f"test/{name}" in metrics
    hparams = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert hparams["hyper_parameters"]["classes"] == ["background", "road", "car"]


def test_a_16_bit_grayscale_folder_trains_with_one_input_channel_and_evaluates(tmp_path):
    root = tmp_path / "gray"
    for i in range(8):
        image = np.random.default_rng(i).integers(0, 65536, (24, 28), dtype=np.uint16)
        save(root / "images" / f"scan_{i}.png", image)
        save(root / "masks" / f"scan_{i}.png", box(255, (24, 28)))
    cfg = make_config(
        tmp_path,
        "data=folder",
        f"data.source.root={root}",
        "data.source.in_channels=1",
        "data.mean=auto",
        "data.std=auto",
        *TRAIN_FAST,
    )
    train(cfg)
    run = tmp_path / "run"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert hparams["model"]["in_channels"] == 1
    assert checkpoint["state_dict"]["net.encoder.conv1.weight"].shape[1] == 1
    pixels = np.stack([np.asarray(Image.open(p)) for p in sorted((root / "images").iterdir())])
    train_ids = (run / "splits" / "train.txt").read_text().split()
    chosen = pixels[[int(i.split("_")[1]) for i in train_ids]] / 65535.0
    assert hparams["normalization"]["mean"] == pytest.approx([chosen.mean()], abs=1e-6)
    assert hparams["normalization"]["std"] == pytest.approx([chosen.std()], abs=1e-6)

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        eval_cfg = compose(
            "eval", [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"output_dir={run / 'ev'}"]
        )
    report = evaluate(eval_cfg, data_from_run=True)
    assert report["images"] == len((run / "splits" / "test.txt").read_text().split())
    assert 0.0 <= report["metrics"]["plain"]["iou_foreground"] <= 1.0
    assert Image.open(run / "ev" / "examples.png").mode == "RGB"  # 16-bit gray, displayed


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and modification time."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_a_read_only_data_folder_trains_and_checks_with_caches_elsewhere(
    photos, tmp_path, cache_dir, capsys
):
    before = snapshot(photos)
    modes = {p: p.stat().st_mode for p in [photos, *photos.rglob("*")]}
    for path in modes:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        run_app(
            download.main, "data=folder", f"data.source.root={photos}"
        )  # make data DATASET=folder
        assert "data.mean=" in capsys.readouterr().out
        cfg = make_config(
            tmp_path,
            "data=folder",
            f"data.source.root={photos}",
            "data.cache.enabled=true",
            "data.mean=auto",
            "data.std=auto",
            *TRAIN_FAST,
        )
        train(cfg)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert snapshot(photos) == before  # (root may write anywhere: this is what shows it did not)
    assert len(list((cache_dir / "samples").glob("Folder-*"))) >= 1
    assert list((cache_dir / "statistics").glob("statistics-*.json"))

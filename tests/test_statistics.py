"""Training-split statistics: mean/std and class weights by hand, the cache, `auto` in a run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from PIL import Image

from lightseg.config import validate
from lightseg.data import Sample, SegmentationSource
from lightseg.data.statistics import measure, resolve_auto, training_statistics
from lightseg.errors import LightsegError
from lightseg.train import train
from tests.conftest import FAST, make_config
from tests.test_data_folder import TRAIN_FAST, street_config, street_label

BACKGROUND, A, B, IGNORED = 0, 1, 2, 255


class TwoImages(SegmentationSource):
    """Two 4x4 images of one gray value each, with hand-made masks; counts its reads."""

    classes = ("background", "a", "b")

    def __init__(self, root) -> None:
        super().__init__(root)
        self.reads = 0

    def find(self) -> list[Sample]:
        return [Sample("one", self.root / "one.png"), Sample("two", self.root / "two.png")]

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        self.reads += 1
        if sample.id == "one":  # 2 ignored, 10 background, 4 of class a
            mask = np.array([[IGNORED] * 2 + [BACKGROUND] * 2] + [[BACKGROUND] * 4] * 2 + [[A] * 4])
            return np.full((4, 4, 3), 51, np.uint8), mask.astype(np.uint8)
        mask = np.array([[BACKGROUND] * 4] * 2 + [[B] * 4] * 2)  # 8 background, 8 of class b
        return np.full((4, 4, 3), 102, np.uint8), mask.astype(np.uint8)


@pytest.fixture
def source(tmp_path) -> TwoImages:
    for name in ("one", "two"):
        (tmp_path / f"{name}.png").write_bytes(name.encode())  # files the cache key can stat
    return TwoImages(tmp_path)


def test_mean_std_and_class_frequencies_by_hand(source):
    result = measure(source, source.find())
    assert result.mean == pytest.approx((0.3, 0.3, 0.3))  # 51/255 = 0.2 and 102/255 = 0.4
    assert result.std == pytest.approx((0.1, 0.1, 0.1))
    assert result.class_pixels == (18, 4, 8)  # the 2 ignored pixels count for no class
    assert result.class_images == (2, 1, 1)
    assert result.pixels_with_class == (14 + 16, 14, 16)


def test_median_and_inverse_frequency_weights_by_hand(source):
    result = measure(source, source.find())
    # freq = pixels of c / pixels of images with c: 18/30 = 0.6, 4/14, 8/16 = 0.5; median 0.5
    assert result.class_weights("median") == pytest.approx([0.5 / 0.6, 0.5 / (4 / 14), 1.0])
    assert result.class_weights("auto") == result.class_weights("median")
    # inverse: labelled pixels / (3 classes x pixels of c) = 30/54, 30/12, 30/24
    assert result.class_weights("inverse") == pytest.approx([30 / 54, 30 / 12, 30 / 24])
    with pytest.raises(LightsegError, match=r"class_weights='balanced' is not a weighting"):
        result.class_weights("balanced")


def test_a_class_without_training_pixels_gets_weight_1_and_a_warning(source, caplog):
    result = measure(source, source.find()[:1])  # image "one" has no pixel of class b
    assert result.class_pixels == (10, 4, 0)
    # median of freq 10/14 and 4/14 is 7/14: weights 0.7, 1.75, and 1 for the absent class
    assert result.class_weights("median") == pytest.approx([0.7, 1.75, 1.0])
    assert "No training pixel of class(es) ['b']" in caplog.text


def test_statistics_are_cached_until_a_file_changes(source, tmp_path):
    folder = tmp_path / "cache"
    first = training_statistics(source, source.find(), folder)
    assert source.reads == 2 and len(list(folder.glob("statistics-*.json"))) == 1
    assert training_statistics(source, source.find(), folder) == first
    assert source.reads == 2  # from the cache
    (tmp_path / "two.png").write_bytes(b"changed: another size")
    training_statistics(source, source.find(), folder)
    assert source.reads == 4 and len(list(folder.glob("statistics-*.json"))) == 2


def test_class_weights_auto_are_computed_logged_and_saved_with_the_run(tmp_path):
    cfg = street_config(tmp_path, "loss=ce", "loss.ce.term.class_weights=auto")
    train(cfg)
    run = tmp_path / "run"
    train_ids = (run / "splits" / "train.txt").read_text().split()
    labels = np.stack([street_label(int(i.split("_")[1])) for i in train_ids])
    pixels = np.array([(labels == c).sum() for c in range(3)])
    labelled = (labels != 255).sum(axis=(1, 2))
    present = np.stack([(labels == c).any(axis=(1, 2)) for c in range(3)])  # [class, image]
    with_class = (present * labelled).sum(axis=1)  # labelled pixels of images with the class
    freq = pixels / with_class
    expected = np.median(freq) / freq

    saved = yaml.safe_load((run / "config.yaml").read_text())["loss"]["ce"]["term"]["class_weights"]
    assert saved == pytest.approx(expected.tolist(), rel=1e-5)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    assert state["criterion.terms.ce.weights"].tolist() == pytest.approx(saved)


def test_pos_weight_auto_for_a_binary_task(tmp_path, data_dir):
    from tests.fixtures_datasets import FOLDER_CASES, folder_label

    cfg = make_config(
        tmp_path,
        "data=folder",
        *TRAIN_FAST,
        "loss=bce",
        "loss.bce.term.pos_weight=auto",
        data_dir=data_dir,
    )
    train(cfg)
    train_ids = (tmp_path / "run" / "splits" / "train.txt").read_text().split()
    assert set(train_ids) <= set(FOLDER_CASES)
    foreground = sum(int(folder_label(i).sum()) for i in train_ids)
    background = sum(int(folder_label(i).size) for i in train_ids) - foreground
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["loss"]["bce"]
    assert saved["term"]["pos_weight"] == pytest.approx(background / foreground, rel=1e-5)


def test_weights_that_are_not_a_weighting_are_refused_before_any_work(tmp_path):
    cfg = make_config(tmp_path, "experiment=demo", "loss=ce", "loss.ce.term.class_weights=balanced")
    with pytest.raises(
        LightsegError, match=r"loss\.ce\.term\.class_weights='balanced' is not valid"
    ):
        validate(cfg)
    validate(
        make_config(tmp_path, "experiment=demo", "loss=ce", "loss.ce.term.class_weights=inverse")
    )


def test_class_weights_on_a_binary_task_point_to_pos_weight(tmp_path, data_dir):
    cfg = make_config(
        tmp_path,
        "experiment=demo",
        *FAST,
        "loss=ce",
        "loss.ce.term.class_weights=auto",
        data_dir=data_dir,
    )
    refused = (LightsegError, InstantiationException)  # raised in the module's constructor
    with pytest.raises(refused, match=r"binary one weighs its foreground with pos_weight"):
        train(cfg)


def test_mean_auto_normalises_with_the_training_split_values(tmp_path):
    cfg = street_config(tmp_path, "data.mean=auto", "data.std=auto", "data.split_dir=null")
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.locate()
    images = np.stack(
        [np.asarray(Image.open(s.image)) / 255.0 for s in datamodule.splits["train"]]
    ).reshape(-1, 3)
    assert datamodule.mean == pytest.approx(tuple(images.mean(0)), abs=1e-6)
    assert datamodule.std == pytest.approx(tuple(images.std(0)), abs=1e-6)
    batch = next(iter(datamodule.train_dataloader()))
    assert batch["image"].shape[1] == 3


def test_resolve_auto_returns_a_new_config_with_numbers_and_leaves_the_given_one(tmp_path):
    overrides = ("loss=ce", "loss.ce.term.class_weights=inverse", "data.mean=auto", "data.std=auto")
    cfg = street_config(tmp_path, *overrides, "data.split_dir=null")
    datamodule = instantiate(cfg.data, _convert_="all")
    resolved = resolve_auto(cfg, datamodule)
    assert cfg.data.mean == "auto" and cfg.loss.ce.term.class_weights == "inverse"  # untouched
    train = datamodule.splits["train"]
    images = np.stack([np.asarray(Image.open(s.image)) / 255.0 for s in train]).reshape(-1, 3)
    assert resolved.data.mean == pytest.approx(images.mean(0).tolist(), abs=1e-6)
    assert resolved.data.std == pytest.approx(images.std(0).tolist(), abs=1e-6)
    labels = np.stack([street_label(int(s.id.split("_")[1])) for s in train])
    pixels = np.array([(labels == c).sum() for c in range(3)])
    expected = pixels.sum() / (3 * pixels)  # every class is present in the training split
    assert resolved.loss.ce.term.class_weights == pytest.approx(expected.tolist(), rel=1e-5)

"""COCO 2017: instance annotations to semantic masks, label sets, crowds, and the PNG cache
(in lightseg's cache folder, never in the data folder)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from torchvision.models._meta import _COCO_CATEGORIES

from lightseg.data import SegmentationDataModule
from lightseg.data import coco as coco_module
from lightseg.data.coco import COCO, LABEL_SETS
from lightseg.data.voc import VOC_CLASSES
from lightseg.errors import LightsegError
from tests.fixtures_datasets import BIG, COCO_IMAGES, CROWD_ID, coco_json, coco_label, write_coco


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch) -> Path:
    """A cache folder of each test's own (masks are keyed on the json, which tests share)."""
    monkeypatch.setenv("LIGHTSEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def coco_root(tmp_path: Path) -> Path:
    return write_coco(tmp_path / "coco")


def files(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def prepared(root: Path, **options) -> tuple[COCO, dict]:
    source = COCO(root, **options)
    source.prepare()
    return source, source.split(source.find(), {}, seed=0)


def test_fixture_has_the_real_file_quirks():
    data = coco_json("train2017")
    by_id = {a["id"]: a for a in data["annotations"]}
    assert max(by_id) > 2**31
    crowd = by_id[CROWD_ID]
    assert crowd["iscrowd"] == 1 and isinstance(crowd["segmentation"]["counts"], list)
    assert crowd["area"] != 20 * 15  # the decoded crowd has 300 pixels; never assert area
    assert isinstance(by_id[2]["segmentation"]["counts"], str)  # compressed RLE
    assert isinstance(by_id[1]["segmentation"], list)  # polygon
    assert 139 not in {a["image_id"] for a in coco_json("val2017")["annotations"]}


@pytest.mark.parametrize("label_set", ["voc21", "coco81"])
def test_masks_pixel_for_pixel(coco_root, label_set):
    source, splits = prepared(coco_root, label_set=label_set)
    assert [s.id for s in splits["train"]] == ["000000000009", "000000000025", "000000000030"]
    assert [s.id for s in splits["val"]] == [s.id for s in splits["test"]]
    assert [s.id for s in splits["val"]] == ["000000000139", "000000000285"]
    for sample in splits["train"] + splits["val"]:
        image, mask = source.read(sample)
        expected = coco_label(int(sample.id), label_set)
        assert image.shape == (*expected.shape, 3)
        np.testing.assert_array_equal(mask, expected, err_msg=f"{label_set} {sample.id}")


def test_crowd_can_take_its_class(coco_root):
    source, splits = prepared(coco_root, crowd="label")
    sample = next(s for s in splits["train"] if s.id == "000000000025")
    np.testing.assert_array_equal(source.read(sample)[1], coco_label(25, "voc21", crowd="label"))


def test_drop_empty_removes_unlabelled_training_images_only(coco_root):
    _, splits = prepared(coco_root, drop_empty=True)
    assert [s.id for s in splits["train"]] == ["000000000009", "000000000025"]  # 30: only a kite
    assert [s.id for s in splits["val"]] == ["000000000139", "000000000285"]  # 139 kept
    _, splits = prepared(coco_root, label_set="coco81", drop_empty=True)
    assert len(splits["train"]) == 3  # the kite is a coco81 class


def test_label_sets():
    voc_names, voc_of = LABEL_SETS["voc21"]
    coco_names, coco_of = LABEL_SETS["coco81"]
    assert voc_names == VOC_CLASSES
    # COCO's names for the VOC classes (torchvision's table gives the COCO name of each id)
    coco_name_of_voc = {
        "aeroplane": "airplane",
        "diningtable": "dining table",
        "motorbike": "motorcycle",
        "pottedplant": "potted plant",
        "sofa": "couch",
        "tvmonitor": "tv",
    }
    for coco_id, index in voc_of.items():
        voc_name = voc_names[index]
        assert _COCO_CATEGORIES[coco_id] == coco_name_of_voc.get(voc_name, voc_name)
    assert sorted(voc_of.values()) == list(range(1, 21))
    assert list(coco_names) == ["background", *(n for n in _COCO_CATEGORIES[1:] if n != "N/A")]
    assert (coco_of[1], coco_of[17], coco_of[38], coco_of[72], coco_of[90]) == (1, 16, 34, 63, 80)
    assert sorted(coco_of.values()) == list(range(1, 81))


def cache_files(source: COCO) -> dict[str, int]:
    return {
        str(path.relative_to(source.cache_root)): path.stat().st_mtime_ns
        for path in sorted(source.cache_root.rglob("*"))
        if path.is_file() and path.suffix != ".lock"  # the preparation's lock is not cache
    }


def test_cache_is_reused_then_rebuilt_when_the_json_changes(
    coco_root, cache_dir, monkeypatch, caplog
):
    data = files(coco_root)
    with caplog.at_level("INFO"):
        source, _ = prepared(coco_root)
    assert caplog.text.count("Building the COCO") == 2  # train2017 and val2017
    assert source.cache_root == cache_dir / "coco_masks" and files(coco_root) == data
    first = cache_files(source)
    assert len(first) == 3 + 1 + 2 + 1  # one PNG per image plus a manifest, per subset

    built = []
    real_build = coco_module.build_cache
    monkeypatch.setattr(coco_module, "build_cache", lambda *a: built.append(a) or real_build(*a))
    caplog.clear()
    with caplog.at_level("INFO"):
        source, _ = prepared(coco_root)
    assert built == [] and cache_files(source) == first  # nothing rebuilt or rewritten
    assert caplog.text.count("Reusing the COCO") == 2

    # edit the val json: the tv's polygon moves; only val2017 is rebuilt
    path = coco_root / "annotations" / "instances_val2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"] = [[0, 0, 10, 0, 10, 5, 0, 5]]
    path.write_text(json.dumps(data))
    source, splits = prepared(coco_root)
    assert [call[0].name for call in built] == ["instances_val2017.json"]
    sample = next(s for s in splits["val"] if s.id == "000000000285")
    expected = np.zeros(COCO_IMAGES["val2017"][285][1:], np.uint8)
    expected[0:5, 0:10] = 20
    np.testing.assert_array_equal(source.read(sample)[1], expected)
    after = cache_files(source)
    assert {k: v for k, v in after.items() if k.startswith("train")} == {
        k: v for k, v in first.items() if k.startswith("train")
    }

    # another label set is cached separately; the voc21 cache stays valid
    prepared(coco_root, label_set="coco81")
    assert len(built) == 3
    prepared(coco_root)
    assert len(built) == 3


def test_find_before_prepare_is_a_clear_error(coco_root):
    with pytest.raises(LightsegError, match=r"mask cache .* missing or out of date.*prepare"):
        COCO(coco_root).find()


def test_missing_dataset(tmp_path):
    with pytest.raises(LightsegError, match=r"instances_train2017\.json.*data.download data=coco"):
        COCO(tmp_path / "coco").prepare()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"images": [], "annotations": []}', "is not a COCO instances file"),
        ("[1, 2, 3]", "is not a COCO instances file"),
        ("{not json", "Cannot read COCO annotations"),
        (
            json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}),
            "names categories differently",
        ),
    ],
)
def test_json_that_is_not_coco(coco_root, content, message):
    path = coco_root / "annotations" / "instances_val2017.json"
    path.write_text(content)
    with pytest.raises(
        LightsegError,
        match=rf"instances_val2017\.json.*{message}|{message}.*"
        rf"instances_val2017\.json",
    ):
        COCO(coco_root).prepare()


def test_undecodable_segmentation_names_the_annotation(coco_root):
    path = coco_root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][3]["segmentation"] = {"size": [40, 48], "counts": 12}
    path.write_text(json.dumps(data))
    with pytest.raises(LightsegError, match=rf"instances_train2017\.json.*annotation {BIG + 4}"):
        COCO(coco_root).prepare()


def test_json_listing_a_missing_image(coco_root):
    (coco_root / "val2017" / "000000000139.jpg").unlink()
    source = COCO(coco_root)
    source.prepare()
    with pytest.raises(LightsegError, match=r"image 139 as '000000000139\.jpg'"):
        source.find()


def test_bad_options():
    with pytest.raises(LightsegError, match="label_set='voc20'"):
        COCO("coco", label_set="voc20")
    with pytest.raises(LightsegError, match="crowd='drop'"):
        COCO("coco", crowd="drop")


TWO_NODE_SCRIPT = """
import logging, sys, time
from lightseg.data import coco
from lightseg.data.module import prepare_source
from lightseg.data.source import cache_home
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
build = coco.build_cache

def slow_build(*args):  # a real cache takes minutes: make the two preparations overlap
    time.sleep(1.0)
    build(*args)

coco.build_cache = slow_build
prepare_source(coco.COCO(sys.argv[1]), cache_home())  # as lightseg prepares before find()
"""


def test_two_nodes_sharing_the_data_folder_build_the_cache_once(coco_root, cache_dir):
    """Every process prepares before it finds: on shared storage, one builds, one waits."""
    data = files(coco_root)
    nodes = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_NODE_SCRIPT, str(coco_root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    logs = [node.communicate(timeout=120)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs
    both = "".join(logs)
    assert both.count("Building the COCO") == 2  # train2017 and val2017, once each
    assert both.count("Reusing the COCO") == 2  # the other node waited, then reused them
    assert not list(cache_dir.rglob("*.partial*"))  # no half-built cache left behind
    assert files(coco_root) == data  # nothing written into the data folder, no lock file
    source, splits = prepared(coco_root)
    sample = next(s for s in splits["val"] if s.id == "000000000285")
    np.testing.assert_array_equal(source.read(sample)[1], coco_label(285, "voc21"))


def test_a_failed_start_leaves_nothing_in_the_data_folder(coco_root, tmp_path):
    (coco_root / "annotations" / "instances_val2017.json").unlink()
    data = files(coco_root)
    module = SegmentationDataModule(COCO(coco_root), {"train": [], "eval": []})
    with pytest.raises(LightsegError, match=r"instances_val2017\.json"):
        module.locate()
    assert files(coco_root) == data

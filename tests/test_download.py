"""`make data`: verified downloads through torchvision's helpers, served here without a network."""

from __future__ import annotations

import hashlib
import io
import re
import shutil
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from lightseg.config import compose_config
from lightseg.data import download
from lightseg.data.download import Archive, main, prepare_dataset
from lightseg.errors import LightsegError
from tests.fixtures_datasets import write_sbd, write_voc
from tests.runs import run_app

VOC_URL = "https://example.test/VOCtrainval.tar"
SBD_URL = "https://example.test/benchmark.tgz"


def prepare(name: str, *overrides: str) -> None:
    """What ``python -m lightseg.data.download data=<name> OVERRIDES`` does, in this process."""
    cfg = compose_config([f"data={name}", *overrides], "download")
    prepare_dataset(cfg, name, {o.split("=", 1)[0] for o in overrides})


def tar_of(folder: Path, top: str, mode: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as archive:
        archive.add(folder / top, arcname=top)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def voc_archives(tmp_path_factory) -> dict[str, bytes]:
    """The VOC and SBD fixtures packed as the real archives are (top folders included)."""
    folder = tmp_path_factory.mktemp("archives")
    write_voc(folder / "VOCdevkit" / "VOC2012")
    write_sbd(folder / "benchmark_RELEASE" / "dataset")
    return {
        VOC_URL: tar_of(folder, "VOCdevkit", "w"),
        SBD_URL: tar_of(folder, "benchmark_RELEASE", "w:gz"),
    }


def md5(payload: bytes) -> str:
    return hashlib.md5(payload).hexdigest()


class Response:
    """Just enough of an HTTP response for torchvision's downloader; may drop mid-transfer."""

    def __init__(self, url: str, payload: bytes, drop_after: int | None = None) -> None:
        self.url, self.payload, self.drop_after = url, payload, drop_after
        self.length, self.position = len(payload), 0

    def read(self, size: int = -1) -> bytes:
        if self.drop_after is not None and self.position >= self.drop_after:
            raise urllib.error.URLError("connection reset by peer")
        size = self.length if size < 0 else size
        chunk = self.payload[self.position : self.position + size]
        self.position += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def serve(monkeypatch, payloads: dict[str, bytes], drop_after: int | None = None) -> list[str]:
    """Route urllib to ``payloads`` (anything else is unreachable); returns the URLs opened."""
    opened = []

    def urlopen(request, *args, **kwargs):
        url = request.full_url if isinstance(request, urllib.request.Request) else request
        opened.append(url)
        if url not in payloads:
            raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        return Response(url, payloads[url], drop_after)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return opened


def pin_voc(monkeypatch, voc_md5: str, sbd_md5: str) -> None:
    archives = (
        Archive(VOC_URL, voc_md5, ".", "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"),
        Archive(SBD_URL, sbd_md5, ".", "benchmark_RELEASE/dataset/val.txt"),
    )
    monkeypatch.setitem(download.ARCHIVES, "voc", archives)


def test_offline_says_what_to_fetch_and_leaves_nothing(tmp_path, monkeypatch):
    data = tmp_path / "data"
    serve(monkeypatch, {})
    real = download.ARCHIVES["voc"][0]
    with pytest.raises(LightsegError) as error:
        prepare("voc", f"paths.data_dir={data}")
    message = str(error.value)
    assert real.url in message and real.md5 in message and "Temporary failure" in message
    assert str(data / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt") in message
    assert list(data.iterdir()) == []


def test_dropped_connection_leaves_no_partial_file(tmp_path, monkeypatch, voc_archives):
    data = tmp_path / "data"
    pin_voc(monkeypatch, md5(voc_archives[VOC_URL]), md5(voc_archives[SBD_URL]))
    serve(monkeypatch, voc_archives, drop_after=1 << 15)
    partial_files = []
    real_unlink = shutil.rmtree

    def rmtree(path, *args, **kwargs):  # look at the scratch folder just before it goes
        partial_files.extend(p.stat().st_size for p in Path(path).rglob("*.tar"))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(LightsegError, match=r"Could not fetch https://example\.test/VOCtrainval"):
        prepare("voc", f"paths.data_dir={data}")
    assert partial_files == [1 << 15]  # a partial archive was written ...
    assert list(data.iterdir()) == []  # ... and removed


def test_download_verifies_unpacks_and_checks_the_layout(
    tmp_path, monkeypatch, voc_archives, capsys
):
    data = tmp_path / "data"
    pin_voc(monkeypatch, md5(voc_archives[VOC_URL]), md5(voc_archives[SBD_URL]))
    opened = serve(monkeypatch, voc_archives)
    prepare("voc", f"paths.data_dir={data}")
    assert sorted(p.name for p in data.iterdir()) == ["VOCdevkit", "benchmark_RELEASE"]
    assert (data / "VOCdevkit/VOC2012/SegmentationClass/2007_000032.png").is_file()
    assert (data / "benchmark_RELEASE/dataset/cls/2008_000008.mat").is_file()
    assert "VOC is ready" in capsys.readouterr().out.replace("\n", " ")
    assert {VOC_URL, SBD_URL} <= set(opened)

    opened.clear()
    prepare("voc", f"paths.data_dir={data}")  # already there: nothing downloaded
    assert opened == []
    out = capsys.readouterr().out
    assert "skipping VOCtrainval.tar" in out.replace("\n", " ")
    assert "train_aug: 6, val: 2" in out.replace("\n", " ")


def test_checksum_mismatch_is_refused(tmp_path, monkeypatch, voc_archives):
    data = tmp_path / "data"
    pin_voc(monkeypatch, "0" * 32, md5(voc_archives[SBD_URL]))
    serve(monkeypatch, voc_archives)
    with pytest.raises(LightsegError, match=r"corrupted.*check its MD5 is 0{32}"):
        prepare("voc", f"paths.data_dir={data}")
    assert list(data.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("mads", r"MADS not found: looked for '.*/mads/segmentation_full_body.*kaggle\.com"),
        ("ph2", r"PH2 not found: looked for '.*/PH2Dataset/PH2 Dataset images'.*fc\.up\.pt"),
    ],
)
def test_manual_datasets_say_what_to_download_and_where(tmp_path, monkeypatch, name, expected):
    serve(monkeypatch, {})
    with pytest.raises(LightsegError, match=expected):
        prepare(name, f"paths.data_dir={tmp_path}")


def test_command_line(tmp_path, monkeypatch, capsys):
    serve(monkeypatch, {})
    with pytest.raises(SystemExit) as exit_code:
        run_app(main, "data=mads", f"paths.data_dir={tmp_path}")
    assert exit_code.value.code == 1
    assert "MADS not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_code:
        run_app(main)
    assert exit_code.value.code == 1
    assert "You must specify 'data'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_code:
        run_app(main, "data=pascal")
    assert exit_code.value.code == 1
    assert re.search(r"Could not find 'data/pascal'.*coco.*voc", capsys.readouterr().err, re.S)


def test_folder_check_reads_every_pair_and_stores_the_training_statistics(
    tmp_path, capsys, monkeypatch
):
    from lightseg.data.folder import Folder
    from tests.conftest import make_config
    from tests.fixtures_datasets import FOLDER_CASES, folder_label, write_folder

    root = write_folder(tmp_path / "mine")
    run_app(main, "data=folder", f"data.source.root={root}")  # make data DATASET=folder ARGS=...
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines

    assert f"Folder {root}: 10 image/mask pairs (generated split: train 6, val 2, test 2)" in out
    assert "Masks: binary 0/255 masks (foreground = value >= 128)" in out
    foreground = sum(int(folder_label(case).sum()) for case in FOLDER_CASES)
    pixels = sum(w * h for w, h, _, _ in FOLDER_CASES.values())
    assert f"│ foreground │ {foreground / pixels:.2%} │ 10 │" in out
    assert "│ 40 x 30 │ 2 │" in out and "│ 46 x 30 │ 1 │" in out  # each distinct size
    cfg = make_config(tmp_path, "data=folder", f"data.source.root={root}", "data.split_dir=null")
    datamodule = instantiate(cfg.data, _convert_="all")
    train = np.concatenate(
        [np.asarray(Image.open(s.image)).reshape(-1, 3) for s in datamodule.locate()["train"]]
    )
    mean = [round(float(v), 6) for v in train.mean(0) / 255]
    assert f"data.mean={mean}" in out

    def no_reading(*args):
        raise AssertionError("data.mean=auto must reuse what make data stored")

    monkeypatch.setattr(Folder, "read", no_reading)
    cfg = make_config(
        tmp_path,
        "data=folder",
        f"data.source.root={root}",
        "data.mean=auto",
        "data.std=auto",
        "data.split_dir=null",
    )
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.locate()
    assert list(datamodule.mean) == mean


def test_folder_check_stops_at_the_first_bad_pair(tmp_path):
    from tests.fixtures_datasets import write_folder

    root = write_folder(tmp_path / "mine")
    Image.new("L", (5, 5)).save(root / "masks" / "case_007.png")
    with pytest.raises(LightsegError, match=r"case_007.png' is 5x5 pixels but its image"):
        prepare("folder", f"data.source.root={root}")


def test_many_image_sizes_are_binned():
    from collections import Counter

    from rich.console import Console

    from lightseg.data.download import size_histogram

    shapes = Counter({(100 + i, 50 + i): 1 for i in range(20)})  # widths 100..119, heights 50..69
    console = Console(width=200, record=True)
    console.print(size_histogram(shapes, bins=2))
    rows = [" ".join(line.split()) for line in console.export_text().splitlines()]
    assert "│ 50 - 84 │ 0 │ 20 │" in rows and "│ 85 - 119 │ 20 │ 0 │" in rows

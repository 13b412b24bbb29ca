"""make bundle / make verify: a demo run packed into one archive, re-checked from the archive alone
elsewhere, and refused when its weights or the data on this machine changed."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

from lightseg.errors import LightsegError
from lightseg.runs import RunFolder
from lightseg.tools import verify as verify_tool
from lightseg.tools.bundle import bundle
from lightseg.tools.verify import verify
from tests.runs import run_app


@pytest.fixture(scope="module")
def packed(demo_run: Path, tmp_path_factory) -> tuple[Path, dict, list[str]]:
    """The bundle of a copy of the demo run, the copy then deleted: (archive, its metrics.json,
    its test ids)."""
    copy = tmp_path_factory.mktemp("run_copy") / "run"
    shutil.copytree(demo_run, copy, ignore=shutil.ignore_patterns("last.ckpt"))
    (copy / "publish").mkdir()
    (copy / "publish" / "README.md").write_text("# a model card of make publish")
    archive = bundle(RunFolder(copy), tmp_path_factory.mktemp("bundles") / "run.tar.gz")
    metrics = json.loads((copy / "metrics.json").read_text())
    ids = (copy / "splits" / "test.txt").read_text().split()
    shutil.rmtree(copy)  # verify reads the archive alone
    return archive, metrics, ids


def moved(archive: Path, folder: Path) -> Path:
    """A copy of ``archive`` in a fresh folder that holds nothing else."""
    folder.mkdir()
    return Path(shutil.copy(archive, folder / "copy.tar.gz"))


def test_a_bundle_holds_the_run_and_its_weights_as_safetensors(packed, demo_run, tmp_path):
    archive, _, _ = packed
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path, filter="data")
    assert {
        "config.yaml",
        "metrics.json",
        "per_image.csv",
        "packages.txt",
        "run_info.json",
        "splits/test.txt",
        "model.safetensors",
        "model.json",
        "data.json",
        "bundle.json",
        "publish/README.md",
    } <= names
    weights = safetensors.torch.load_file(tmp_path / "model.safetensors")
    best = torch.load(demo_run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert weights.keys() == best.keys()
    assert all(torch.equal(weights[k], best[k]) for k in best)


def test_a_bundle_verifies_elsewhere_with_the_numbers_of_metrics_json(
    packed, tmp_path, monkeypatch
):
    archive, metrics, _ = packed
    copy = moved(archive, tmp_path / "elsewhere")
    monkeypatch.chdir(copy.parent)
    compared = verify(copy)
    stored = {k: v for k, v in metrics.items() if k.startswith("test/")}
    assert compared.keys() == stored.keys()  # failure rates and loss too
    assert compared["test/dice"][1] == pytest.approx(metrics["test/dice"], abs=1e-4)
    assert compared["test/hd95"][1] == pytest.approx(metrics["test/hd95"], abs=1e-4)
    assert 0 < metrics["test/dice"] < 1


def test_altered_weights_fail_naming_the_metrics_that_moved(packed, tmp_path, capsys):
    archive, metrics, _ = packed
    unpacked = tmp_path / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    weights = safetensors.torch.load_file(unpacked / "model.safetensors")
    head = next(k for k in weights if "segmentation_head" in k and k.endswith("weight"))
    weights[head] = -weights[head]  # the other class wins where the network was sure
    safetensors.torch.save_file(weights, unpacked / "model.safetensors")
    altered = tmp_path / "altered.tar"  # uncompressed (faster): verify reads either
    with tarfile.open(altered, "w") as tar:
        for path in sorted(unpacked.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(unpacked)), recursive=False)
    with pytest.raises(SystemExit) as exit_:
        run_app(verify_tool.main, f"bundle={altered}")
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"test/dice does not reproduce: metrics.json holds {metrics['test/dice']}" in err
    assert "model.safetensors was changed after make bundle wrote it" in err
    assert err.count("does not reproduce") >= 2  # one paragraph per metric that moved


def demo_data_copy(demo_run: Path, folder: Path) -> Path:
    shutil.copytree(demo_run.parent / "data", folder)
    return folder


def test_changed_or_missing_test_images_are_named_as_data_that_differs(packed, demo_run, tmp_path):
    archive, _, ids = packed
    data = demo_data_copy(demo_run, tmp_path / "data")
    image_file = next(data.rglob(f"{ids[0]}.bmp"))
    pixels = np.asarray(Image.open(image_file)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]  # one pixel
    Image.fromarray(pixels).save(image_file)
    with pytest.raises(LightsegError) as error:
        verify(archive, data_dir=str(data))
    message = str(error.value)
    assert message.startswith("The data on this machine differs from the run's")
    assert f"1 with other pixels ({ids[0]})" in message and "DATA=" in message

    shutil.rmtree(next(data.rglob(ids[1])))  # the case's folder
    with pytest.raises(LightsegError, match=rf"1 missing \({ids[1]}\) and 1 with other pixels"):
        verify(archive, data_dir=str(data))


def test_a_bad_run_or_bundle_is_one_paragraph_naming_it(tmp_path, demo_run):
    with pytest.raises(LightsegError, match=r"RUN='.*nowhere' is not a folder: point RUN= at"):
        bundle(RunFolder(tmp_path / "nowhere"))
    unfinished = tmp_path / "unfinished"
    shutil.copytree(demo_run, unfinished, ignore=shutil.ignore_patterns("*.ckpt", "metrics.json"))
    with pytest.raises(LightsegError, match=r"no metrics\.json \(the final metrics: an unfinished"):
        bundle(RunFolder(unfinished))
    (tmp_path / "x.tar.gz").write_bytes(b"not an archive")
    with pytest.raises(LightsegError, match="is not a bundle that make bundle wrote"):
        verify(tmp_path / "x.tar.gz")

"""make publish and make demo: a run's folder that smp and lightseg load and that predicts as the
run's best.ckpt, its model card, an offline push, and the demo page driven by a headless browser."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
from huggingface_hub import ModelCard
from omegaconf import OmegaConf
from PIL import Image

import lightseg
from lightseg.checkpoints import load_module
from lightseg.errors import LightsegError
from lightseg.experiment import build
from lightseg.runs.per_image import read_per_image
from lightseg.tools import demo
from lightseg.tools.predict import read_input
from lightseg.tools.publish import main, publish
from tests.conftest import make_config
from tests.runs import run_app
from tests.test_pretrained import ONE_EPOCH, closed_port_endpoint
from tests.test_pretrained import demo as one_epoch

REPOSITORY = Path(__file__).parents[1]


def publish_config(run: Path, output: Path, **more) -> OmegaConf:
    return OmegaConf.create({"run": str(run), "output": str(output), **more})


def demo_images(run: Path, count: int = 2) -> list[Path]:
    """Test images of the run's demo data, as PNG copies (what a person would upload)."""
    root = Path(OmegaConf.load(run / "config.yaml").data.source.root)
    ids = (run / "splits" / "test.txt").read_text().split()[:count]
    out = []
    for name in ids:
        (bmp,) = root.rglob(f"{name}_Dermoscopic_Image/{name}.bmp")
        out.append(run.parent / f"{name}.png")
        if not out[-1].is_file():
            Image.open(bmp).save(out[-1])
    return out


@pytest.fixture(scope="module")
def published(demo_run: Path, tmp_path_factory) -> Path:
    """The demo run copied (its metrics.json with a protocol record) and published."""
    run = tmp_path_factory.mktemp("published") / "run"
    shutil.copytree(demo_run, run)
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["protocol"] = {"split": {"kind": "stratified random"}, "scoring": "training size"}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return publish(publish_config(run, run.parent / "folder"))


def test_the_published_folder_predicts_as_best_ckpt_in_smp_and_as_a_new_runs_start(
    published, demo_run, tmp_path, data_dir, one_thread
):
    assert {"model.safetensors", "config.json", "README.md", "app.py", "lightseg.json"} <= {
        p.name for p in published.iterdir()
    }
    module = load_module(demo_run / "checkpoints" / "best.ckpt")
    images = [read_input(path, 3) for path in demo_images(demo_run)]
    segmenter = demo.load(str(demo_run / "checkpoints" / "best.ckpt"))
    batch = torch.cat(
        [torch.nn.functional.interpolate(segmenter.normalize(i), size=(64, 64)) for i in images]
    )
    with torch.no_grad():
        expected = module.net(batch)
        assert torch.equal(smp.from_pretrained(str(published)).eval()(batch), expected)

        # a new run's start, same class count: the very same logits
        cfg = make_config(
            tmp_path,
            *one_epoch(f"model.from_pretrained={published}"),
            data_dir=demo_run.parent / "data",
        )
        same = build(cfg)
        assert torch.equal(same.module.net.eval()(batch), expected)

        # another class count (VOC's 21): a new head on the very same features
        cfg = make_config(
            tmp_path,
            "experiment=demo",
            "data=voc",
            *ONE_EPOCH,
            f"model.from_pretrained={published}",
            data_dir=data_dir,
        )
        other = build(cfg).module.net.eval()
        assert other.segmentation_head[0].weight.shape[0] == 21
        features = {}
        for name, net in (("new", other), ("old", module.net)):
            net.segmentation_head.register_forward_pre_hook(
                lambda _, args, name=name: features.setdefault(name, args[0])
            )
            net(batch)
        assert torch.equal(features["new"], features["old"])

    # the demo's model (app.py's) gives best.ckpt's probabilities at the image's own size
    served = demo.load(str(published))
    for image in images:
        assert np.array_equal(served(image), segmenter(image))


def test_the_model_card_has_the_runs_numbers_cis_protocol_and_commit(published, demo_run):
    card = ModelCard.load(published / "README.md")
    assert card.data.library_name == "segmentation-models-pytorch"
    assert card.data.datasets == ["Demo"] and {"dice", "iou"} <= set(card.data.metrics)
    metrics = json.loads((demo_run / "metrics.json").read_text())
    dice = read_per_image(demo_run / "per_image.csv", "test/")["test/dice"]
    mean = sum(dice.values()) / len(dice)
    (row,) = [line for line in card.text.splitlines() if line.startswith("| dice |")]
    value, per_image, count = (cell.strip() for cell in row.split("|")[2:5])
    assert value == f"{metrics['test/dice']:.4f}" and count == str(len(dice)) == "3"
    low, high = (float(x) for x in per_image.split("[")[1].rstrip("]").split(","))
    assert per_image.startswith(f"{mean:.4f} [") and low <= mean <= high and low < high
    assert min(dice.values()) - 1e-4 <= low and high <= max(dice.values()) + 1e-4
    commit = json.loads((demo_run / "run_info.json").read_text())["git"]["commit"]
    assert f"- commit: {commit}" in card.text
    assert "## Protocol" in card.text and "kind: stratified random" in card.text
    assert "- architecture: Unet\n- encoder: resnet18\n" in card.text
    assert "- pretrained source: none (trained from scratch)" in card.text
    assert "- test images: 3 (splits/test.txt, sha256 " in card.text
    assert "- optimizer: AdamW (lr=0.002, weight_decay=0.0001)" in card.text
    assert "- epochs: 2\n" in card.text and "- segmentation_models_pytorch: " in card.text


def test_an_offline_push_is_one_paragraph_and_keeps_the_folder(
    published, monkeypatch, tmp_path, capsys
):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", closed_port_endpoint())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    run, folder = published.parent / "run", tmp_path / "pushed"
    with pytest.raises(SystemExit) as exit_:  # the command line: exit 1, one paragraph
        run_app(main, f"run={run}", f"output={folder}", "push_to_hub=true", "repo_id=me/demo")
    assert exit_.value.code == 1
    message = capsys.readouterr().err.removeprefix("lightseg: error: ").strip()
    assert message.startswith("Cannot push to the Hugging Face Hub: http://127.0.0.1:")
    assert "does not answer" in message and "\n" not in message
    assert f"The folder '{folder}' is kept" in message and "hf upload me/demo" in message
    assert (folder / "model.safetensors").is_file() and (folder / "README.md").is_file()
    with pytest.raises(LightsegError, match=r"push_to_hub=true needs repo_id="):
        publish(publish_config(run, folder, push_to_hub=True))


def test_a_network_smp_cannot_load_is_refused_pointing_to_export(published, monkeypatch):
    run = published.parent / "run"
    module = load_module(run / "checkpoints" / "best.ckpt")
    module.net = torch.nn.Conv2d(3, 1, 1)  # as torchvision's and SegNet's: no smp class
    monkeypatch.setattr("lightseg.tools.publish.load_module", lambda _: module)
    with pytest.raises(LightsegError, match=r"run '.*' trained Conv2d .*\(make export CKPT="):
        publish(publish_config(run, run.parent / "refused"))
    assert not (run.parent / "refused").exists()


# --- the demo page, as a person uses it ---------------------------------------------------------

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_page(url: str, server: subprocess.Popen, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"make demo served nothing at {url} within {timeout} s: {log.read_text()}")


@pytest.mark.skipif(
    not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver (.ci/run installs them)"
)
def test_the_demo_page_segments_an_uploaded_image(demo_run, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port, stamp, log = free_port(), tmp_path / "installed", tmp_path / "demo.log"
    stamp.touch()  # make's install step is up to date: the test's interpreter serves
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(lightseg.__file__).parents[1]),
        "GRADIO_ANALYTICS_ENABLED": "False",
    }
    command = ["make", "demo", f"RUN={demo_run}", f"PORT={port}", f"PY={sys.executable}"]
    with log.open("w") as output:
        server = subprocess.Popen(
            [*command, f"STAMP={stamp}"],
            cwd=REPOSITORY,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make and the server it starts: one group to stop
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = None
    try:
        wait_for_page(f"http://127.0.0.1:{port}/", server, log)
        driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        driver.get(f"http://127.0.0.1:{port}/")
        wait = WebDriverWait(driver, 60)
        upload = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#image input[type=file]"))
        (image,) = demo_images(demo_run, 1)
        upload.send_keys(str(image))
        shown = wait.until(
            lambda d: [
                img.get_attribute("src")
                for img in d.find_elements(By.CSS_SELECTOR, "#overlay img")
                if img.get_attribute("src")
            ]
        )
        with urllib.request.urlopen(shown[0], timeout=10) as answer:
            overlay = np.asarray(Image.open(io.BytesIO(answer.read())).convert("RGB"))
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    expected = demo.segment(demo.load(str(demo_run)), str(image))[0]
    assert overlay.shape == expected.shape and np.array_equal(overlay, expected)
    assert not math.isclose(expected.std(), 0)  # a picture, not a blank

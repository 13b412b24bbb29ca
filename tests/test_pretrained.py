"""Starting points: a whole saved smp model (new head for another class count), foundation
encoders from timm under DPT / UPerNet / Segformer, and clear errors when weights are offline."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch

import lightseg
from lightseg.checkpoints import load_module
from lightseg.errors import LightsegError
from lightseg.experiment import build
from lightseg.models import build_network, input_multiple
from lightseg.tools.eval import evaluate
from lightseg.train import train
from tests.conftest import make_config
from tests.test_eval import eval_config

SMP = "lightseg.models.smp_models.build"
HUB_ID = "smp-hub/segformer-b0-512x512-ade-160k"


#: One epoch of two batches at 64x64, no logger, random weights.
ONE_EPOCH = (
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "logger=none",
    "callbacks.progress_bar=null",
    "callbacks.model_summary=null",
    "callbacks.prediction_overlays=null",
    "data.num_workers=0",
    "data.batch_size=4",
    "data.image_size=[64,64]",
    "model.encoder_weights=null",
)


def demo(*overrides: str) -> tuple[str, ...]:
    """One epoch on 16 demo cases."""
    return ("experiment=demo", "data.source.num_cases=16", *ONE_EPOCH, *overrides)


def fit(cfg) -> tuple[torch.nn.Module, dict]:
    """The experiment's network after training, and its weights before."""
    experiment = build(cfg, enable_progress_bar=False)
    before = {k: v.clone() for k, v in experiment.module.net.state_dict().items()}
    experiment.trainer.fit(experiment.module, datamodule=experiment.datamodule)
    return experiment.module.net, before


def changed(net: torch.nn.Module, before: dict, prefix: str) -> float:
    """The share of the float tensors under ``prefix`` that training changed."""
    state = net.state_dict()
    keys = [k for k in before if k.startswith(prefix) and state[k].is_floating_point()]
    assert keys, prefix
    return sum(not torch.equal(state[k], before[k]) for k in keys) / len(keys)


# --- a whole saved model ----------------------------------------------------------------------


def test_a_saved_model_starts_a_run_with_a_new_head_and_its_checkpoint_needs_no_folder(
    tmp_path, data_dir, caplog, one_thread
):
    folder = tmp_path / "segformer"
    saved = smp.Segformer(
        "mit_b0", encoder_weights=None, classes=5, decoder_segmentation_channels=8
    )
    saved.save_pretrained(folder)
    cfg = make_config(
        tmp_path, *demo(f"model.from_pretrained={folder}", "model.arch=FPN"), data_dir=data_dir
    )
    with caplog.at_level(logging.INFO, logger="lightseg.models.smp_models"):
        experiment = build(cfg)
    reports = [r.getMessage() for r in caplog.records if "new layers" in r.getMessage()]
    assert len(reports) == 1 and reports[0].endswith("from scratch): segmentation_head.0")
    net, state = experiment.module.net, saved.state_dict()
    assert type(net) is smp.Segformer  # the folder's architecture, not model.arch
    assert net.segmentation_head[0].weight.shape == (1, 8, 1, 1)  # binary demo: one logit
    rest = [k for k in state if not k.startswith("segmentation_head.")]
    assert len(rest) == len(state) - 2 > 100
    assert all(torch.equal(net.state_dict()[k], state[k]) for k in rest)
    assert (
        experiment.cfg.model.arch == "Segformer" and experiment.cfg.model.encoder_name == "mit_b0"
    )

    metrics = train(cfg)
    checkpoint = tmp_path / "run" / "checkpoints" / "best.ckpt"
    shutil.rmtree(folder)  # eval and predict rebuild the network from the checkpoint alone
    module = load_module(checkpoint)
    assert type(module.net) is smp.Segformer
    assert module(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    report = evaluate(eval_config(checkpoint, tmp_path), data_from_run=True)
    assert report["images"] > 0 and 0 <= report["metrics"]["plain"]["dice"] <= 1
    assert 0 <= metrics["test/dice"] <= 1


# --- foundation encoders ----------------------------------------------------------------------

TINY_VIT = ("+model.embed_dim=48", "+model.num_heads=2")
SMALL_DPT = ("++model.decoder_intermediate_channels=[8,8,8,8]", "++model.decoder_fusion_channels=8")
ENCODERS = {  # random weights, narrowed through timm's own options
    "dinov2-dpt": ("DPT", "tu-vit_small_patch14_dinov2", 16, *TINY_VIT, *SMALL_DPT,
                   "+model.patch_size=16", "+model.img_size=64"),
    "dinov3-dpt": ("DPT", "tu-vit_small_patch16_dinov3", 16, *TINY_VIT, *SMALL_DPT,
                   "+model.img_size=64"),
    "sam-vit-dpt": ("DPT", "tu-samvit_base_patch16", 16, *TINY_VIT, *SMALL_DPT,
                    "+model.img_size=64", "+model.neck_chans=16"),
    "hiera-upernet": ("UPerNet", "tu-hiera_tiny_224", 32, "+model.img_size=[64,64]",
                      "+model.embed_dim=16", "+model.num_heads=1", "+model.stages=[1,1,1,1]",
                      "+model.decoder_channels=16"),
    "convnext-upernet": ("UPerNet", "tu-convnext_atto", 32, "+model.decoder_channels=16"),
    "convnext-segformer": ("Segformer", "tu-convnext_atto", 32,
                           "+model.decoder_segmentation_channels=16"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_a_foundation_encoder_trains_one_demo_epoch(name, tmp_path, data_dir, one_thread):
    arch, encoder, multiple, *options = ENCODERS[name]
    cfg = make_config(
        tmp_path,
        *demo(f"model.arch={arch}", f"model.encoder_name={encoder}", *options),
        data_dir=data_dir,
    )
    net, before = fit(cfg)
    assert input_multiple(net) == multiple  # the patch size / stride, from the network
    assert changed(net, before, "segmentation_head.") == 1.0
    assert changed(net, before, "decoder.") > 0.5 and changed(net, before, "encoder.") > 0.5


def test_ph2_dpt_dinov2_freezes_its_encoder_and_trains_the_decoder(tmp_path, data_dir, one_thread):
    cfg = make_config(
        tmp_path,
        "experiment=ph2_dpt_dinov2",
        *ONE_EPOCH,
        *TINY_VIT,
        *SMALL_DPT,
        "model.img_size=64",
        data_dir=data_dir,
    )
    assert (cfg.model.arch, cfg.model.patch_size, cfg.data.image_size) == ("DPT", 16, [64, 64])
    assert cfg.model.encoder_name == "tu-vit_small_patch14_dinov2.lvd142m"
    assert cfg.callbacks.finetuning.freeze_encoder_epochs == cfg.trainer.max_epochs == 1
    net, before = fit(cfg)
    assert input_multiple(net) == 16
    assert changed(net, before, "encoder.") == 0.0  # frozen for the whole run
    assert (
        changed(net, before, "decoder.") > 0.5 and changed(net, before, "segmentation_head.") > 0.5
    )


def test_timm_weights_load_from_a_local_file_with_the_patch_size_resampled(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the file only
    vit = timm.create_model("vit_small_patch14_dinov2", embed_dim=48, num_heads=2, img_size=56)
    torch.save(vit.state_dict(), tmp_path / "dinov2.pth")
    config = {
        "_target_": SMP,
        "arch": "DPT",
        "encoder_name": "tu-vit_small_patch14_dinov2",
        "encoder_weights": "imagenet",
        "encoder_weights_file": str(tmp_path / "dinov2.pth"),
        "embed_dim": 48,
        "num_heads": 2,
        "patch_size": 16,
        "img_size": 64,
    }
    encoder = build_network(config, 2).encoder.model
    assert torch.equal(encoder.blocks[3].attn.qkv.weight, vit.blocks[3].attn.qkv.weight)
    assert encoder.patch_embed.proj.weight.shape == (48, 3, 16, 16)  # resampled from 14
    missing = {**config, "encoder_weights_file": str(tmp_path / "nope.pth")}
    with pytest.raises(LightsegError, match=r"model.encoder_weights_file='.*nope.pth' does not"):
        build_network(missing, 2)
    build_network({**missing, "encoder_weights": None}, 2)  # a rebuild reads no file


def test_encoders_a_decoder_cannot_take_are_one_paragraph_that_says_what_to_do():
    vit = {"_target_": SMP, "encoder_name": "tu-vit_small_patch14_dinov2", "encoder_weights": None}
    with pytest.raises(LightsegError, match=r"does not work with UPerNet: .*model.arch=DPT"):
        build_network({**vit, "arch": "UPerNet", "img_size": 56}, 2)
    with pytest.raises(
        LightsegError,
        match=r"patches of 14 pixels. Add \+model.patch_size=16 \+model.dynamic_img_size=true",
    ):
        build_network({**vit, "arch": "DPT", "img_size": 56, "embed_dim": 48, "num_heads": 2}, 2)
    with pytest.raises(LightsegError, match=r"unexpected keyword argument 'img_sise'.*timm"):
        build_network({**vit, "arch": "DPT", "img_sise": 56}, 2)


# --- offline ----------------------------------------------------------------------------------


def closed_port_endpoint() -> str:
    with socket.socket() as probe:  # a port nothing listens on: the hub does not answer
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_a_hub_id_not_in_the_cache_fails_at_once_naming_the_cache_and_the_fixes(
    monkeypatch, tmp_path
):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", closed_port_endpoint())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    with pytest.raises(LightsegError) as error:
        build_network({"_target_": SMP, "from_pretrained": HUB_ID}, 2)
    assert time.monotonic() - start < 5  # not the hub's retries
    message = str(error.value)
    for part in (HUB_ID, str(tmp_path / "hub"), "HF_HUB_OFFLINE=1", "save_pretrained"):
        assert part in message
    (tmp_path / "empty").mkdir()
    with pytest.raises(LightsegError, match=r"'.*empty' has no config.json"):
        build_network({"_target_": SMP, "from_pretrained": str(tmp_path / "empty")}, 2)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (f"model.from_pretrained={HUB_ID}", f"model.from_pretrained='{HUB_ID}' is not a folder"),
        (
            "model.encoder_weights=imagenet model.encoder_weights_file=missing/vit.safetensors",
            "model.encoder_weights_file='missing/vit.safetensors' does not exist",
        ),
    ],
)
def test_offline_weights_end_the_command_in_one_paragraph(override, expected, tmp_path, data_dir):
    src = Path(lightseg.__file__).parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(src),
        "HF_ENDPOINT": closed_port_endpoint(),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightseg.train",
            *demo("model.arch=DPT", "model.encoder_name=tu-vit_tiny_patch16_224", *SMALL_DPT),
            "+model.img_size=64",
            *override.split(),
            "print_config=false",
            f"paths.data_dir={data_dir}",
            f"paths.log_dir={tmp_path / 'logs'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and expected in result.stderr
    paragraph = result.stderr.split("lightseg: error:")[1].strip()
    assert "\n\n" not in paragraph


def test_a_hub_id_loads_offline_from_a_copied_cache(monkeypatch, tmp_path):
    import huggingface_hub

    snapshot = tmp_path / "hub" / "models--smp-hub--tiny-unet" / "snapshots" / ("0" * 40)
    saved = smp.Unet("resnet18", encoder_weights=None, encoder_depth=3, decoder_channels=[8] * 3)
    saved.save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    net = build_network({"_target_": SMP, "from_pretrained": "smp-hub/tiny-unet"}, 1)
    assert type(net) is smp.Unet and len(net.encoder.out_channels) == 4  # encoder_depth=3
    assert torch.equal(net.encoder.conv1.weight, saved.encoder.conv1.weight)

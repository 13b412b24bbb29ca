"""LoRA (``model.peft``) and layer-wise learning-rate decay (``callbacks.finetuning.layer_decay``),
on a tiny random-weight ViT under DPT (timm's vit_tiny: 12 blocks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from lightseg.callbacks import Finetuning
from lightseg.checkpoints import load_module
from lightseg.errors import LightsegError
from lightseg.experiment import build
from lightseg.models import SegmentationModule
from lightseg.tools.export import export
from tests.conftest import CE_DICE, make_config
from tests.test_export import export_config, reference_logits

pytest.importorskip("peft")

VIT = {
    "_target_": "lightseg.models.smp_models.build",
    "arch": "DPT",
    "encoder_name": "tu-vit_tiny_patch16_224",
    "encoder_weights": None,
    "decoder_intermediate_channels": [16, 16, 16, 16],
    "decoder_fusion_channels": 16,
}
LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": ["qkv", "proj"]}


UNET = {
    "_target_": VIT["_target_"],
    "arch": "Unet",
    "encoder_name": "resnet18",
    "encoder_weights": None,
}


def vit_module(**model) -> SegmentationModule:
    return module_of({**VIT, **model})


def module_of(model: dict) -> SegmentationModule:
    return SegmentationModule(
        model=model,
        loss=CE_DICE,
        optimizer={"_target_": "torch.optim.AdamW", "lr": 0.1, "weight_decay": 0.01},
        classes=["background", "lesion"],
    )


class Start(Callback):
    """The network's parameters when training starts."""

    def on_train_start(self, trainer, module):
        self.state = {k: v.detach().clone() for k, v in module.net.named_parameters()}


def test_lora_trains_the_adapters_decoder_and_head_only_and_exports_merged(
    tmp_path, data_dir, one_thread
):
    pytest.importorskip("onnxruntime")
    cfg = make_config(
        tmp_path,
        "experiment=demo",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "logger=none",
        "callbacks=none",
        "data.num_workers=0",
        "data.batch_size=2",
        "data.image_size=[224,224]",
        "data.source.num_cases=8",
        "model.arch=DPT",
        "model.encoder_name=tu-vit_tiny_patch16_224",
        "+model.decoder_intermediate_channels=[16,16,16,16]",
        "+model.decoder_fusion_channels=16",
        "model.peft.r=4",
        data_dir=data_dir,
    )
    experiment = build(cfg, enable_checkpointing=False, enable_progress_bar=False)
    start = Start()
    experiment.trainer.callbacks.append(start)
    experiment.trainer.fit(experiment.module, datamodule=experiment.datamodule)
    net = experiment.module.net
    after = dict(net.named_parameters())
    trainable = {k for k, p in after.items() if p.requires_grad}
    encoder = {k for k in after if k.startswith("encoder.")}
    adapters = {k for k in encoder if ".lora_" in k}
    assert trainable == (set(after) - encoder) | adapters  # the base encoder is frozen
    # qkv and proj of 12 blocks, plus the patch embedding's proj: A and B each
    assert len(adapters) == 2 * (2 * 12 + 1)
    moved = {k for k in after if not torch.equal(start.state[k], after[k])}
    assert moved <= trainable and not (encoder - adapters) & moved
    assert {k for k in adapters if "lora_B" in k} <= moved  # B starts at zero, then learns
    assert any(k.startswith("decoder.") for k in moved)
    assert any(k.startswith("segmentation_head.") for k in moved)

    # The checkpoint rebuilds the adapted network from its config (weights_only load) ...
    ckpt = tmp_path / "lora.ckpt"
    experiment.trainer.save_checkpoint(ckpt)
    reloaded = load_module(ckpt)
    for name, value in reloaded.net.state_dict().items():
        assert torch.equal(value, net.state_dict()[name]), name
    # ... and the export folds the adapters into the weights: same logits, no LoRA left.
    path = tmp_path / "lora.onnx"
    export(
        export_config(
            ckpt, "onnx", f"output={path}", "check.batch_sizes=[1]", "check.image_sizes=[[224,224]]"
        )
    )
    import onnx
    import onnxruntime

    assert not [i.name for i in onnx.load(str(path)).graph.initializer if "lora" in i.name]
    images = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"image": images.numpy()})[0]
    np.testing.assert_allclose(logits, reference_logits(ckpt, images), atol=1e-4)


def test_layer_decay_scales_each_vit_block_below_the_top():
    module = vit_module()
    finetuning = Finetuning(layer_decay=0.5, decoder_lr_multiplier=10)
    groups = finetuning.parameter_groups(module, [{"params": list(module.parameters())}])
    torch.optim.AdamW(groups)  # the groups are valid optimizer groups
    names = {id(p): n for n, p in module.net.named_parameters()}
    rates = {names[id(p)]: (g["lr"], g.get("weight_decay")) for g in groups for p in g["params"]}
    assert len(rates) == sum(len(g["params"]) for g in groups) == len(names)  # each exactly once
    vit = "encoder.model."
    for block in range(12):  # vit_tiny: the stem is layer 0, block i layer i + 1, the top 13
        lr = 0.1 * 0.5 ** (12 - block)
        assert rates[f"{vit}blocks.{block}.attn.qkv.weight"] == pytest.approx((lr, 0.01))
        assert rates[f"{vit}blocks.{block}.attn.qkv.bias"] == pytest.approx((lr, 0.0))
    assert rates[f"{vit}patch_embed.proj.weight"] == pytest.approx((0.1 * 0.5**13, 0.01))
    decoder = [v for k, v in rates.items() if not k.startswith("encoder.")]
    assert decoder and all(v[0] == pytest.approx(1.0) for v in decoder)


def test_thawing_a_lora_encoder_thaws_its_adapters_only():
    module = vit_module(peft=LORA)
    finetuning = Finetuning(freeze_encoder_epochs=1)
    adapters = {n for n, p in module.net.encoder.named_parameters() if p.requires_grad}
    assert adapters and all(".lora_" in n for n in adapters)
    finetuning.freeze(module.net, True)
    assert not any(p.requires_grad for p in module.net.encoder.parameters())
    finetuning.freeze(module.net, False)
    assert {n for n, p in module.net.encoder.named_parameters() if p.requires_grad} == adapters


@pytest.mark.parametrize(
    ("model", "options", "message"),
    [
        ({**VIT, "peft": {**LORA, "rank": 4}}, {}, r"unexpected keyword argument 'rank'"),
        (
            {**UNET, "peft": LORA},
            {},
            r"Target modules \{.*\} not found.*this encoder's are conv1, conv2, downsample.0\)",
        ),
        (UNET, {"layer_decay": 0.7}, r"needs a timm encoder .*tu-<timm name>"),
        (VIT, {"layer_decay": 1.5}, r"layer_decay=1.5 must be a number in \(0, 1\]"),
    ],
)
def test_settings_that_cannot_work_are_named(model, options, message):
    with pytest.raises(LightsegError, match=message):
        module = module_of(model)
        Finetuning(**options).parameter_groups(module, [{"params": list(module.parameters())}])

"""torchvision's FCN / DeepLabV3 / LR-ASPP and SegNet through their builders and the module."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.segmentation import DeepLabV3_MobileNet_V3_Large_Weights

from lightseg.errors import LightsegError
from lightseg.models import SegmentationModule, build_network
from lightseg.models.torchvision_models import TORCHVISION_ARCHS
from tests.conftest import make_config, metrics_for

TARGETS = {"segnet": "lightseg.models.segnet.build"}


def network_config(arch: str, **options) -> dict:
    """``model`` as its group option would give it: ``_target_`` of the family + keys."""
    if arch.lower() in TARGETS:
        return {"_target_": TARGETS[arch.lower()], **options}
    family = "torchvision_models" if arch in TORCHVISION_ARCHS else "smp_models"
    return {"_target_": f"lightseg.models.{family}.build", "arch": arch, **options}


def build_model(arch: str, out_channels: int, **options):
    return build_network(network_config(arch, **options), out_channels)


#: The ResNet-101 variants differ from the ResNet-50 ones only in depth, and take ~10 s a step
#: on a laptop CPU: `make test-all` steps them.
NEW_ARCHS = [
    pytest.param(arch, marks=pytest.mark.slow) if "resnet101" in arch else arch
    for arch in (*TORCHVISION_ARCHS, "SegNet")
]
TASKS = {"binary": ["background", "lesion"], "multiclass": ["background", "cat", "dog"]}
SMALL = "deeplabv3_mobilenet_v3_large"  # the quickest one that has an auxiliary head


def make_module(arch: str, classes: list[str], **model) -> SegmentationModule:
    model = {"encoder_weights": None, **model}
    if arch != "SegNet":
        model.setdefault("weights", None)
    return SegmentationModule(
        model=network_config(arch, **model),
        loss={"ce": {"term": {"_target_": "lightseg.losses.CrossEntropy"}, "weight": 1.0}},
        metrics=metrics_for(classes),
        optimizer={"_target_": "torch.optim.SGD", "lr": 0.1},
        classes=classes,
    )


def batch_for(classes: list[str], size: int = 32) -> dict:
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, size, size, generator=generator)
    masks = torch.randint(0, len(classes), (2, size, size), generator=generator)
    masks[0, :2] = 255  # some ignored pixels
    return {"image": images, "mask": masks}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("arch", NEW_ARCHS)
def test_new_arch_steps_once_and_predicts_full_resolution(arch, task):
    classes = TASKS[task]
    torch.manual_seed(0)  # the same init whatever ran before
    module = make_module(arch, classes)
    batch = batch_for(classes)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    before = [p.detach().clone() for p in module.parameters()]
    module.train()
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    grads = [p.grad for p in module.parameters()]
    moved = [not torch.equal(a, p) for a, p in zip(before, module.parameters(), strict=True)]
    assert sum(moved) > 0
    for moves, grad in zip(moved, grads, strict=True):
        assert moves if grad is not None and grad.abs().max() > 1e-6 else True  # reached: moved
        assert grad is not None or not moves  # outside the loss's graph: untouched
    module.eval()
    with torch.no_grad():
        logits = module(batch["image"])
    assert isinstance(logits, torch.Tensor)
    assert logits.shape == (2, 1 if task == "binary" else 3, 32, 32)


def test_aux_loss_counts_in_training_with_its_weight():
    classes = TASKS["multiclass"]
    module = make_module(SMALL, classes, aux_weight=0.3).train()
    batch = batch_for(classes)
    torch.manual_seed(1)  # the heads' dropout draws the same masks in both passes
    total = module.training_step(batch, 0)
    torch.manual_seed(1)
    logits, aux = module.net(batch["image"])
    main = F.cross_entropy(logits, batch["mask"], ignore_index=255)
    expected = main + 0.3 * F.cross_entropy(aux, batch["mask"], ignore_index=255)
    assert torch.allclose(total, expected, atol=1e-6)
    assert (total - main).item() > 0.1  # the aux term is there, not a rounding error


def test_aux_head_matches_torchvision_and_is_skipped_at_inference():
    module = make_module(SMALL, TASKS["multiclass"])
    tv_model = module.net.net  # the torchvision model inside the wrapper
    images = batch_for(TASKS["multiclass"])["image"]
    torch.manual_seed(2)
    logits, aux = module.train()(images)
    torch.manual_seed(2)
    reference = tv_model(images)
    assert torch.equal(logits, reference["out"]) and torch.equal(aux, reference["aux"])

    calls = []
    tv_model.aux_classifier.register_forward_hook(lambda *_: calls.append(1))
    module.eval()
    with torch.no_grad():
        logits = module(images)
        assert torch.equal(logits, tv_model(images)["out"])  # torchvision's own forward
    assert isinstance(logits, torch.Tensor) and len(calls) == 1  # only from tv_model(images)


def test_aux_weight_zero_builds_no_aux_head():
    classes = TASKS["multiclass"]
    module = make_module(SMALL, classes, aux_weight=0.0).train()
    assert module.net.net.aux_classifier is None
    batch = batch_for(classes)
    torch.manual_seed(3)
    total = module.training_step(batch, 0)
    torch.manual_seed(3)
    expected = F.cross_entropy(module.net(batch["image"]), batch["mask"], ignore_index=255)
    assert torch.allclose(total, expected, atol=1e-6)


def test_pretrained_weights_load_and_class_convs_are_replaced(monkeypatch):
    # A 21-class checkpoint as torchvision publishes it, served without network.
    torch.manual_seed(4)
    published = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=True
    ).state_dict()
    monkeypatch.setattr(
        DeepLabV3_MobileNet_V3_Large_Weights, "get_state_dict", lambda *a, **k: published
    )
    same = build_model(SMALL, 21, weights="COCO_WITH_VOC_LABELS_V1", encoder_weights=None)
    assert all(torch.equal(v, published[k]) for k, v in same.net.state_dict().items())

    binary = build_model(SMALL, 1, weights="COCO_WITH_VOC_LABELS_V1", encoder_weights=None)
    state = binary.net.state_dict()
    replaced = {k for k in published if not torch.equal(state[k], published[k])}
    assert state.keys() == published.keys()
    assert replaced <= {
        "classifier.4.weight",
        "classifier.4.bias",
        "aux_classifier.4.weight",
        "aux_classifier.4.bias",
    }
    assert state["classifier.4.weight"].shape == (1, 256, 1, 1)
    assert state["aux_classifier.4.weight"].shape == (1, 10, 1, 1)


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("deeplabv3_resnet50", {"weights": "COCO_WITH_VOC_LABELS_V1"}),
        ("lraspp_mobilenet_v3_large", {"weights": None, "encoder_weights": "IMAGENET1K_V1"}),
        ("SegNet", {"encoder_weights": "IMAGENET1K_V1"}),
    ],
)
def test_offline_weights_give_the_clear_error(arch, options, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # nothing cached

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    options = {"encoder_weights": None, **options}
    with pytest.raises(LightsegError, match="probably offline") as error:
        build_model(arch, 2, **options)
    weights = options.get("weights") or options["encoder_weights"]
    what = "SegNet's VGG16-BN encoder" if arch == "SegNet" else f"model.arch={arch}"
    assert f"weights '{weights}' for {what}" in str(error.value)
    assert "model.encoder_weights=null" in str(error.value)


def test_output_stride_16_keeps_the_weights_and_halves_the_feature_map():
    images = torch.randn(1, 3, 32, 32)
    torch.manual_seed(5)
    stride8 = build_model("fcn_resnet50", 2, weights=None, encoder_weights=None).eval()
    torch.manual_seed(5)
    stride16 = build_model(
        "fcn_resnet50", 2, weights=None, encoder_weights=None, output_stride=16
    ).eval()
    for key, value in stride8.state_dict().items():
        assert torch.equal(value, stride16.state_dict()[key]), key
    layer3 = stride16.net.backbone["layer3"]
    assert layer3[0].conv2.stride == (2, 2) and layer3[1].conv2.dilation == (1, 1)
    assert stride16.net.backbone["layer4"][1].conv2.dilation == (2, 2)
    with torch.no_grad():
        assert stride8.net.backbone(images)["out"].shape[-2:] == (4, 4)
        assert stride16.net.backbone(images)["out"].shape[-2:] == (2, 2)
        assert stride16(images).shape == (1, 2, 32, 32)


def test_atrous_rates_set_the_aspp_dilations():
    torch.manual_seed(6)
    default = build_model(SMALL, 3, weights=None, encoder_weights=None)
    torch.manual_seed(6)
    model = build_model(SMALL, 3, weights=None, encoder_weights=None, atrous_rates=[6, 12, 18])
    aspp = model.net.classifier[0]
    assert [branch[0].dilation for branch in aspp.convs[1:4]] == [(6, 6), (12, 12), (18, 18)]
    assert [branch[0].dilation for branch in default.net.classifier[0].convs[1:4]] == [
        (12, 12),
        (24, 24),
        (36, 36),
    ]
    for key, value in default.state_dict().items():  # same shapes: the weights carry over
        assert torch.equal(value, model.state_dict()[key]), key
    two = build_model(SMALL, 3, weights=None, encoder_weights=None, atrous_rates=[6, 12])
    assert len(two.net.classifier[0].convs) == 4  # 1x1, two atrous, image pooling
    assert two.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize(
    ("arch", "options", "message"),
    [
        ("fcn_resnet50", {"atrous_rates": [6, 12, 18]}, "has none"),
        (SMALL, {"output_stride": 8}, "use 16"),
        ("deeplabv3_resnet50", {"output_stride": 32}, "use 8 or 16"),
        (SMALL, {"weights": "VOC_V9"}, "Available: COCO_WITH_VOC_LABELS_V1"),
        (SMALL, {"encoder_weights": "imagenet"}, "Available: IMAGENET1K_V1"),
        (SMALL, {"in_channels": 1}, "in_channels must be 3"),
        ("fcn_resnet50", {"encoder_name": "resnet34"}, "model.encoder_name: not a setting"),
        (
            "SegNet",
            {"encoder_weights": "imagenet"},
            "not a weight set of VGG16-BN. Available: IMAGENET1K_V1",
        ),
        ("SegNet", {"aux_weight": 0.5}, "model.aux_weight: not a setting of .*segnet.build"),
        ("FCN8s", {}, "'FCN8s' is not an smp architecture. Available: Unet, .*DPT"),
    ],
)
def test_bad_model_config_raises_lightseg_error(arch, options, message):
    options = {"encoder_weights": None, **options}
    if arch in TORCHVISION_ARCHS:
        options.setdefault("weights", None)
    with pytest.raises(LightsegError, match=message):
        build_model(arch, 2, **options)


def test_torchvision_family_rejects_an_smp_architecture():
    config = {"_target_": "lightseg.models.torchvision_models.build", "arch": "Unet"}
    with pytest.raises(LightsegError, match="'unet' is not one of torchvision's"):
        build_network(config, 2)


@pytest.mark.parametrize("group", ["torchvision", "segnet"])
def test_model_config_files_build(group, tmp_path):
    cfg = make_config(tmp_path, f"model={group}", "model.encoder_weights=null")
    if group == "torchvision":
        cfg.model.arch = "lraspp_mobilenet_v3_large"  # its defaults otherwise; quick to build
    model = build_network(cfg.model, out_channels=3).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3, 32, 32)

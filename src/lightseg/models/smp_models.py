"""Any segmentation-models-pytorch architecture and encoder (``model=smp``).

``model.arch`` is any smp architecture name, ``model.encoder_name`` any smp encoder or
``tu-<timm name>``; every other key is an option of that architecture's class (e.g.
``decoder_channels`` for Unet, ``encoder_output_stride`` for DeepLabV3Plus) and is checked
against it, so a key that belongs to another architecture or family is an error, not ignored.
With a ``tu-`` encoder, keys the architecture does not take go to ``timm.create_model``.
``from_pretrained``: the whole network saved by ``save_pretrained`` (a folder or hub id), whose
config.json defines the architecture; the run's config gets it, so checkpoints need neither.
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from safetensors.torch import load_file
from torch import nn

from lightseg.errors import LightsegError
from lightseg.models.network import hub_offline_unless_reachable, weights_unavailable

log = logging.getLogger(__name__)

#: lower-case name -> architecture class (Unet, FPN, DeepLabV3Plus, ...)
ARCHITECTURES: dict[str, type[nn.Module]] = dict(smp.MODEL_ARCHITECTURES_MAPPING)
#: Arguments this builder sets itself; the rest of the config goes to the architecture.
OWN_ARGUMENTS = ("encoder_name", "encoder_weights", "in_channels", "classes")


def build(
    out_channels: int,
    arch: str = "Unet",
    encoder_name: str = "resnet34",
    encoder_weights: str | None = None,
    in_channels: int = 3,
    from_pretrained: str | None = None,
    encoder_weights_file: str | None = None,
    **options,
) -> nn.Module:
    """smp's ``arch`` with ``encoder_name``; logits at the input resolution."""
    if from_pretrained:  # the saved architecture, whatever arch and options say
        network = build(
            out_channels, in_channels=in_channels, **saved_architecture(from_pretrained)
        )
        return load_whole(network, str(from_pretrained))
    architecture = ARCHITECTURES.get(str(arch).lower())
    if architecture is None:
        names = ", ".join(cls.__name__ for cls in ARCHITECTURES.values())
        raise LightsegError(
            f"model.arch='{arch}' is not an smp architecture. Available: {names}. "
            "torchvision's models are model=torchvision, SegNet is model=segnet."
        )
    timm = str(encoder_name).startswith("tu-")
    accepted = set(inspect.signature(architecture.__init__).parameters) - {"self", *OWN_ARGUMENTS}
    unknown = sorted(set(options) - accepted)
    if unknown and not timm:
        raise LightsegError(
            f"model.{', model.'.join(unknown)}: not an option of smp's {architecture.__name__} "
            f"(model=smp, model.arch={arch}). Its options: {', '.join(sorted(accepted))}."
        )
    if encoder_weights_file and encoder_weights is not None:  # timm's file, not its hub's
        if not (timm and Path(encoder_weights_file).is_file()):
            raise LightsegError(
                f"model.encoder_weights_file='{encoder_weights_file}' does not exist or the "
                "encoder is not timm's (model.encoder_name=tu-<name>). Give a timm weights file "
                "(.safetensors or .pth) copied to this machine, or drop the key to load "
                f"model.encoder_weights from the Hugging Face cache ({constants.HF_HUB_CACHE})."
            )
        encoder_weights = True
        options["pretrained_cfg_overlay"] = {"file": str(encoder_weights_file)}
    try:
        network = architecture(
            encoder_name=encoder_name,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=out_channels,
            **options,
        )
    except (KeyError, RuntimeError, TypeError, ValueError) as error:
        message = str(error.args[0] if error.args else error)
        words = ("encoder", "unknown model", "keyword argument", "downsampling")
        if not any(word in message.lower() for word in words):
            raise
        hint = PLAIN_VIT if "downsampling" in message else TIMM_KEYS if "keyword" in message else ""
        raise LightsegError(
            f"model.encoder_name='{encoder_name}' does not work with {architecture.__name__}: "
            f"{message[:1500].rstrip('.')}.{hint}"
        ) from None
    except OSError as error:  # hub downloads: offline, HTTP and disk errors
        if encoder_weights is None:
            raise
        raise weights_unavailable(f"encoder '{encoder_name}'", encoder_weights, error) from None
    strides = getattr(network.encoder, "output_strides", None)  # DPT's ViT: its patch size
    if strides and any(stride & (stride - 1) for stride in strides):
        raise LightsegError(
            f"smp's DPT resizes ViT features by powers of two, but model.encoder_name="
            f"{encoder_name} has patches of {strides[0]} pixels. Add +model.patch_size=16 "
            "+model.dynamic_img_size=true: timm resamples the pretrained patch and position "
            "embeddings to them (FlexiViT); image sides then need multiples of 16."
        )
    return network


TIMM_KEYS = " With a tu- encoder, keys the architecture does not take go to timm.create_model."
PLAIN_VIT = (
    " A plain ViT (one feature scale: DINOv2, SAM's ViT) goes under model.arch=DPT; UPerNet, "
    "Segformer and the CNN decoders need a pyramid encoder (ConvNeXt, Swin, Hiera, MiT)."
)


def with_saved_architecture(config: dict[str, Any]) -> dict[str, Any]:
    """An smp config with ``from_pretrained``: its architecture keys replaced by the saved ones
    (what the run's checkpoints rebuild); any other config unchanged."""
    if config.get("_target_") != f"{__name__}.build" or not config.get("from_pretrained"):
        return config
    return {**config, **saved_architecture(config["from_pretrained"])}


def saved_architecture(source: str) -> dict[str, Any]:
    """``arch`` and the options ``source``'s config.json holds (classes and input channels
    come from the data, the encoder's weights from the whole network's)."""
    saved = json.loads(Path(hub_file(str(source), "config.json")).read_text())
    arch = saved.pop("_model_class", None)
    if arch is None:
        raise LightsegError(
            f"model.from_pretrained='{source}': its config.json names no smp model "
            "(_model_class); give a folder or repository that smp's save_pretrained wrote."
        )
    kept = {key: value for key, value in saved.items() if key not in ("classes", "in_channels")}
    return {**kept, "arch": arch, "encoder_weights": None}


def load_whole(network: nn.Module, source: str) -> nn.Module:
    """``network`` with ``source``'s weights; tensors of another shape (the head for another
    class count) stay new, and the run's log names them."""
    weights = load_file(hub_file(source, "model.safetensors"))
    with warnings.catch_warnings():  # smp's warning lists mismatched shapes; named below
        warnings.simplefilter("ignore")
        new, unused = network.load_state_dict(weights, strict=False)
    log.info(
        "model.from_pretrained=%s: %d tensors loaded; new layers (trained from scratch): %s%s",
        source,
        len(network.state_dict()) - len(new),
        ", ".join(sorted({name.rsplit(".", 1)[0] for name in new})) or "none",
        f"; unused from the file: {', '.join(sorted(unused))}" if unused else "",
    )
    return network


def hub_file(source: str, name: str) -> str:
    """``name`` in the folder ``source``, else in the Hugging Face repository ``source``."""
    if Path(source).is_dir():
        if (Path(source) / name).is_file():
            return str(Path(source) / name)
        raise LightsegError(
            f"model.from_pretrained='{source}' has no {name}: give a folder that smp's "
            "save_pretrained wrote (config.json and model.safetensors), or a Hugging Face id."
        )
    try:
        with hub_offline_unless_reachable():
            return hf_hub_download(source, name)
    except (OSError, EntryNotFoundError, ValueError) as error:
        raise LightsegError(
            f"model.from_pretrained='{source}' is not a folder here, and its {name} is neither "
            f"in the Hugging Face cache ({constants.HF_HUB_CACHE}) nor downloadable "
            f"({type(error).__name__}). Offline, either download it on a machine with internet "
            f"(hf download {source}), copy that cache folder here and set HF_HUB_OFFLINE=1, or "
            "copy a folder written by save_pretrained and give its path."
        ) from None

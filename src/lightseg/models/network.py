"""The network contract, in one place: how a network is built from config and what it must do.

A network is any ``nn.Module`` named by ``model._target_``. lightseg calls the target with the
config's other keys plus ``out_channels`` (1 for a binary task, else the number of classes);
where the target takes ``in_channels`` and the config leaves it out, lightseg sets it to the
data's (``data.source.in_channels``). The module maps ``[N, in_channels, H, W]`` to logits
``[N, out_channels, H, W]``. In training it may also return auxiliary logits: a tuple
``(logits, aux, ...)`` or a dict ``{"logits": ..., "aux": [...], ...}`` (other keys reach a
module subclass's loss), weighted by its ``aux_weight`` attribute (one number, or one per
auxiliary output). Optional: ``input_multiple`` (image sides must be multiples of it; inference
rounds to it, training checks the data size) and ``encoder`` (what ``callbacks.finetuning``
freezes or gives its own learning rate); keys in :data:`PRETRAINED_KEYS` are set to ``null``
when lightseg rebuilds a trained network, so nothing is downloaded there.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from huggingface_hub import constants as hub
from hydra.utils import get_object, instantiate
from torch import nn

from lightseg.config import check_node
from lightseg.errors import LightsegError, instantiating
from lightseg.models.lora import add_adapters
from lightseg.utils.loggers import answers

log = logging.getLogger(__name__)

#: Config keys that name pretrained weights; ``null`` means "build without downloading".
PRETRAINED_KEYS = ("encoder_weights", "weights", "pretrained", "from_pretrained")


def build_network(config: Mapping[str, Any], out_channels: int) -> nn.Module:
    """The network ``config`` names (``_target_`` + its keys), with ``out_channels`` logits."""
    config = dict(config)
    adapters = config.pop("peft", None) or {}  # LoRA, added below (models/lora.py)
    target = config.get("_target_")
    if not target:
        raise LightsegError(
            "The model config has no _target_. Choose a model group option (model=smp, "
            "model=torchvision, model=segnet) or name your network: model=custom "
            "model._target_=<package.module.Class>."
        )
    check_node("model", config)  # a key the target does not take: say which, and what it takes
    pretrained = any(config.get(key) for key in PRETRAINED_KEYS)
    with (
        instantiating(f"model._target_={target}", _first_line),
        hub_offline_unless_reachable() if pretrained else contextlib.nullcontext(),
    ):
        network = instantiate(config, out_channels=out_channels, _convert_="all")
    if not isinstance(network, nn.Module):
        raise LightsegError(
            f"model._target_={target} returned a {type(network).__name__}, not a torch.nn.Module."
        )
    if adapters.get("r"):
        add_adapters(network, adapters)
    return network


@contextlib.contextmanager
def hub_offline_unless_reachable(timeout: float = 3.0) -> Iterator[None]:
    """The Hugging Face Hub in offline mode while it does not answer: cached weights load at
    once, missing ones fail at once, instead of after ~25 s of retries per file."""
    if hub.HF_HUB_OFFLINE or answers(hub.ENDPOINT, timeout):
        yield
        return
    log.warning("%s does not answer: pretrained weights from the local cache only.", hub.ENDPOINT)
    hub.HF_HUB_OFFLINE = True  # read at each request (huggingface_hub.is_offline_mode)
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = False


def without_pretrained(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with every pretrained-weights key set to null (nothing to download)."""
    return {key: None if key in PRETRAINED_KEYS else value for key, value in config.items()}


def input_multiple(network: nn.Module) -> int:
    """The number image sides must be multiples of (1: any size)."""
    declared = getattr(network, "input_multiple", None)
    if declared is not None:
        return int(declared)
    encoder = getattr(network, "encoder", None)
    if getattr(network, "requires_divisible_input_shape", False) and encoder is not None:
        return int(encoder.output_stride)  # smp models know their own constraint
    return 1


def nearest_multiple(value: float, multiple: int) -> int:
    """The multiple of ``multiple`` nearest to ``value``, at least ``multiple`` itself."""
    return max(multiple, round(value / multiple) * multiple)


def takes(target: str, argument: str) -> bool:
    """Whether the callable ``target`` names has a parameter ``argument`` (or ``**kwargs``)."""
    try:
        parameters = inspect.signature(get_object(str(target))).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return False
    return argument in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def outputs_of(output: Any) -> dict[str, Any]:
    """What a network returned, named: ``{"logits": ..., "aux": [...], ...}`` (the contract)."""
    if isinstance(output, Mapping):
        if "logits" not in output:
            raise LightsegError(
                f"The network returned a dict with keys {sorted(output)}; it needs 'logits'."
            )
        return {**output, "aux": list(output.get("aux") or ())}
    if isinstance(output, tuple | list):
        if not output:
            raise LightsegError("The network returned an empty tuple; return logits first.")
        return {"logits": output[0], "aux": list(output[1:])}
    return {"logits": output, "aux": []}


def logits_of(output: Any) -> torch.Tensor:
    """The main logits of what a network returned (inference: auxiliary outputs dropped)."""
    return outputs_of(output)["logits"]


def check_output(logits: torch.Tensor, images: torch.Tensor, out_channels: int) -> None:
    """Logits must be ``[N, out_channels, H, W]`` at the input's resolution."""
    expected = (images.shape[0], out_channels, *images.shape[-2:])
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise LightsegError(
            f"The network maps images {tuple(images.shape)} to {got}, but lightseg needs "
            f"logits {expected}: [N, out_channels, H, W] at the input resolution (upsample "
            "inside the network if it predicts at a lower one)."
        )


def check_network(
    config: Mapping[str, Any], out_channels: int, in_channels: int, image_size: Sequence[int]
) -> None:
    """Build the network without pretrained weights and run it once at ``image_size``: cheap,
    and the only check that covers every network's own constraints on input sizes."""
    network = build_network(without_pretrained(config), out_channels).eval()
    height, width = (int(side) for side in image_size)
    multiple = input_multiple(network)
    shown = [f"{k}={config[k]}" for k in ("arch", "encoder_name") if config.get(k) is not None]
    described = f"{config.get('_target_')}, {', '.join(shown) or 'its defaults'}"
    if height % multiple or width % multiple:
        fits = [nearest_multiple(side, multiple) for side in (height, width)]
        raise LightsegError(
            f"data.image_size={[height, width]} does not fit the network ({described}): its "
            f"image sides must be multiples of {multiple}. Use e.g. data.image_size={fits}."
        )
    images = torch.zeros(1, in_channels, height, width)
    try:
        with torch.no_grad():
            logits = logits_of(network(images))
    except LightsegError:
        raise
    except Exception as error:  # the network's own complaint is the most precise one
        raise LightsegError(
            f"The network ({described}) cannot take images of "
            f"data.image_size={[height, width]} with {in_channels} channels: "
            f"{type(error).__name__}: {_first_line(error)}. Change data.image_size or the model."
        ) from None
    check_output(logits, images, out_channels)


def weights_unavailable(what: str, weights: str, error: Exception) -> LightsegError:
    """The error for pretrained weights that cannot be fetched (usually: no internet)."""
    return LightsegError(
        f"Could not load pretrained weights '{weights}' for {what} ({type(error).__name__}: "
        f"{_first_line(error)}). This machine is probably offline. Either train from scratch "
        "with model.encoder_weights=null (model.weights=null for torchvision models), or cache "
        "the weights on a machine with internet by building the same model once and copy "
        "~/.cache/huggingface and ~/.cache/torch to the same places here (read offline)."
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__

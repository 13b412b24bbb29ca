"""LoRA (``model.peft.r=4``): low-rank adapters from Hugging Face ``peft`` in the network's encoder.

The adapters are injected into the network itself (``peft.inject_adapter_in_model``), which stays
the class the config names: a checkpoint rebuilds it from the same config and loads with
``weights_only=True``, and eval and predict need nothing new. The encoder's own weights are
frozen (peft's rule); the decoder and head train in full. Export merges the adapters into the
weights they adapt, so the exported graph is the plain network.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from lightseg.errors import LightsegError

#: The layer types LoRA adapts here (what the error lists as possible target_modules).
LAYERS = (nn.Linear, nn.Conv2d)


def add_adapters(network: nn.Module, settings: Mapping[str, Any]) -> None:
    """LoRA in ``network.encoder`` with ``settings`` (peft's ``LoraConfig`` arguments)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise LightsegError(
            "model.peft.r > 0 (LoRA) needs Hugging Face peft: pip install 'lightseg[peft]' "
            "(make install includes it), or set model.peft.r=0."
        ) from None
    encoder = getattr(network, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise LightsegError(
            f"model.peft (LoRA) adapts the network's encoder, but {type(network).__name__} has no "
            "`encoder` module. Use an smp or torchvision model, or give your network an `encoder`."
        )
    try:
        inject_adapter_in_model(LoraConfig(**settings), encoder)
    except (TypeError, ValueError) as error:
        layers = [n.split(".") for n, m in encoder.named_modules() if isinstance(m, LAYERS)]
        names = sorted({".".join(p[-2:] if p[-1].isdigit() else p[-1:]) for p in layers})
        raise LightsegError(
            f"model.peft={dict(settings)} does not fit {type(network).__name__}'s encoder: "
            f"{str(error).splitlines()[0]} The keys are peft.LoraConfig's (r, lora_alpha, "
            "lora_dropout, target_modules: names of the encoder's Linear/Conv layers; this "
            f"encoder's are {', '.join(names[:12])}{', ...' if len(names) > 12 else ''})."
        ) from None


def merge_adapters(network: nn.Module) -> nn.Module:
    """``network`` with every LoRA layer replaced by its base layer holding the merged weight."""
    for name, layer in list(network.named_modules()):
        if type(layer).__module__.startswith("peft.tuners."):  # a LoRA layer
            layer.merge()
            parent, _, child = name.rpartition(".")
            setattr(network.get_submodule(parent), child, layer.get_base_layer())
    return network

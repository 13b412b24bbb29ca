"""The composed config, checked once before any work, and the resolvers the configs use.

:func:`validate` walks every node with a ``_target_`` (model, data and its source and
transforms, loss terms, metrics, optimizer, scheduler, trainer, callbacks, loggers) and checks
its keys against the signature of the class or function it names: a key the target does not
take, or a value of the wrong type, is an error naming the key, the config group option it
came from, and what the target accepts. Ranges are checked by the classes themselves.
"""

from __future__ import annotations

import inspect
import os
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from lightseg.errors import LightsegError

#: Hydra's own keys in a ``_target_`` node.
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
#: Key of every ``loss.<name>`` entry that belongs to the sum, not to the term.
LOSS_WEIGHT_KEY = "weight"
#: Scheduler key saying whether it steps per ``epoch`` (the default) or per ``step``.
SCHEDULER_INTERVAL_KEY = "interval"
#: Optimizer config keys lightseg reads itself (transfer learning), with their defaults.
FINETUNE_KEYS = {"decoder_lr_multiplier": 1.0, "freeze_encoder_epochs": 0}
#: Keys lightseg reads itself and does not pass to the target, by node.
LIGHTSEG_KEYS = {
    "loss": {LOSS_WEIGHT_KEY},
    "scheduler": {SCHEDULER_INTERVAL_KEY},
    "optimizer": set(FINETUNE_KEYS),
}
#: Loss-term values that lightseg replaces by numbers from the training split before building
#: the term (lightseg.data.statistics.fill_from_data), so any term taking these keys gets them.
FROM_TRAINING_SPLIT = {"class_weights": ("auto", "median", "inverse"), "pos_weight": ("auto",)}


def image_size_hw(value: Any, key: str = "data.image_size") -> tuple[int, int]:
    """``256`` or ``[256, 320]`` as ``(height, width)``; anything else is a clear error."""
    listed = isinstance(value, Sequence | ListConfig) and not isinstance(value, str)
    sides = list(value) if listed else [value]
    if len(sides) == 1:
        sides = sides * 2
    valid = len(sides) == 2 and all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in sides
    )
    if not valid:
        raise LightsegError(
            f"{key}={_shown(value)} is not an image size: give one number for a square "
            f"({key}=256) or [height, width] ({key}=[256,320]), positive whole pixels."
        )
    return int(sides[0]), int(sides[1])


def register_resolvers() -> None:
    """``${height_of:size}`` and ``${width_of:size}``: either form of ``data.image_size``."""
    resolvers = {
        "height_of": lambda size: image_size_hw(size)[0],
        "width_of": lambda size: image_size_hw(size)[1],
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, resolver)


def plain(node: Any) -> Any:
    """A resolved config node as plain Python containers (what checkpoints and JSON store)."""
    if isinstance(node, DictConfig | ListConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def validate(cfg: DictConfig, choices: Mapping[str, str] | None = None) -> None:
    """Check every ``_target_`` node's keys and value types; raise one clear LightsegError."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        hint = (
            " model=custom needs the dotted path of your network class: "
            "model._target_=<package.module.Class>."
            if "model._target_" in missing
            else ""
        )
        raise LightsegError(
            f"Required config value(s) not set (???): {', '.join(missing)}. Set them on the "
            f"command line (key=value) or in your config file.{hint}"
        )
    for path, node in target_nodes(plain(cfg)):
        check_node(path, node, choices)


def target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, dict]]:
    """``(dotted path, node)`` for every dict with a ``_target_``, outermost first."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from target_nodes(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from target_nodes(value, f"{path}[{index}]")


def check_node(path: str, node: dict, choices: Mapping[str, str] | None = None) -> None:
    """The keys and value types of one ``_target_`` node at ``path`` (e.g. ``model``)."""
    choices = choices or {}
    target = node["_target_"]
    try:
        function = get_object(str(target))
    except Exception as error:  # ImportError, AttributeError, or errors raised on import
        raise LightsegError(
            f"{path}._target_='{target}' cannot be imported ({type(error).__name__}: {error}). "
            "Check the dotted path; a module of your own must be importable (run from the "
            f"repository root, or add its folder to PYTHONPATH){_group_hint(path, choices)}."
        ) from None
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # builtins without a signature: instantiate() will tell
    parameters = signature.parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    group = path.split(".")[0].split("[")[0]
    own = LIGHTSEG_KEYS.get(group, set())
    given = [k for k in node if k not in HYDRA_KEYS and k not in own]
    if not takes_any:
        unknown = [k for k in given if k not in parameters]
        if unknown:
            keys = ", ".join(f"{path}.{k}" for k in unknown)
            accepted = [n for n, p in parameters.items() if p.kind is not p.VAR_POSITIONAL]
            raise LightsegError(
                f"{keys}: not a setting of {target}{_group_hint(path, choices)}. It takes: "
                f"{', '.join(n for n in accepted if n != 'self') or 'nothing'}. Remove the key, "
                "or choose the config group option it belongs to."
            )
    hints = _type_hints(function)
    for key in given:  # null means "default" or "lightseg fills it in" (schedule lengths)
        hint = hints.get(key)
        if group == "loss" and node[key] in FROM_TRAINING_SPLIT.get(key, ()):
            continue  # replaced by numbers from the training split before the term is built
        if hint is not None and node[key] is not None and _matches(node[key], hint) is False:
            raise LightsegError(
                f"{path}.{key}={_shown(node[key])} is not valid: {target} takes "
                f"{key}: {_type_name(hint)}{_group_hint(path, choices)}."
            )


def _group_hint(path: str, choices: Mapping[str, str]) -> str:
    group = path.split(".")[0].split("[")[0]
    option = choices.get(group)
    return f" (config group option {group}={option})" if option else ""


def _type_hints(function) -> dict[str, Any]:
    init = function.__init__ if inspect.isclass(function) else function
    try:
        return typing.get_type_hints(init)
    except Exception:  # unresolvable annotations: no type check, not an error
        return {}


def _matches(value: Any, hint: Any) -> bool | None:
    """Whether ``value`` fits ``hint``; None where the hint is not a simple one."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        results = [_matches(value, a) for a in args]
        if any(r is True for r in results):
            return True
        return False if all(r is False for r in results) else None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or origin in (Sequence, typing.Sequence):
        return isinstance(value, list | tuple)
    if isinstance(value, dict) and "_target_" in value:
        return None  # a node instantiated into the object the hint names
    if inspect.isclass(hint) and isinstance(value, str | int | float | bool):
        if issubclass(hint, os.PathLike):
            return isinstance(value, str)
        if issubclass(hint, torch.Tensor):  # e.g. a learning rate: a number or a tensor
            return isinstance(value, int | float) and not isinstance(value, bool)
    return None


def _type_name(hint: Any) -> str:
    return str(hint).replace("typing.", "").replace("NoneType", "None")


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def compose_config(overrides: Sequence[str] = (), config_name: str = "train") -> DictConfig:
    """``configs/<config_name>.yaml`` composed with ``overrides``, outside a Hydra app (the
    command-line checks, ``make data``, the benchmark)."""
    from lightseg import CONFIG_DIR  # set before this module is imported

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))

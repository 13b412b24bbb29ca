"""What kind of segmentation task a class list implies, decided here and nowhere else, and
what a task fills in for the loss terms and metrics a config names (:func:`build_named`)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import get_object, instantiate

from lightseg.errors import LightsegError, instantiating

#: Label value that marks pixels excluded from losses and metrics (VOC borders, COCO crowds).
IGNORE_INDEX = 255


@dataclass(frozen=True)
class Task:
    """Two classes make a binary task (one logit, sigmoid); more make a multiclass one (softmax)."""

    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.classes) < 2:
            raise ValueError(f"a segmentation task needs at least 2 classes, got {self.classes}")

    @classmethod
    def of(cls, num_classes: int) -> Task:
        """The task of ``num_classes`` unnamed classes (for parts that only need the count)."""
        return cls(tuple(str(index) for index in range(int(num_classes))))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def binary(self) -> bool:
        return self.num_classes == 2

    @property
    def out_channels(self) -> int:
        return 1 if self.binary else self.num_classes

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities [N, C, H, W]; binary tasks get (background, foreground)."""
        if self.binary:
            foreground = logits.float().sigmoid()
            return torch.cat([1 - foreground, foreground], dim=1)
        return logits.float().softmax(dim=1)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Class indices [N, H, W] from logits [N, out_channels, H, W]."""
        if self.binary:
            return (logits[:, 0] > 0).long()
        return logits.argmax(dim=1)


def task_arguments(config: Mapping[str, Any], task: Task) -> dict[str, Any]:
    """``num_classes``, ``classes`` and ``ignore_index`` for the ``_target_`` of ``config``,
    where its constructor takes them and the config does not set them already."""
    values = {"num_classes": task.num_classes, "classes": list(task.classes)}
    values["ignore_index"] = IGNORE_INDEX
    try:
        parameters = inspect.signature(get_object(str(config["_target_"]))).parameters
    except (ImportError, AttributeError, ValueError, TypeError):
        return {}  # instantiate() reports a target that cannot be imported
    return {k: v for k, v in values.items() if k in parameters and k not in config}


def build_named(
    group: str,
    config: Mapping[str, Mapping[str, Any] | None],
    task: Task,
    kind: type,
    example: str,
    field: str = "",
) -> dict[str, Any]:
    """``{name: {_target_, **options}}`` (the ``loss`` terms or the ``metrics`` group) ->
    ``{name: object}`` with :func:`task_arguments` filled in; ``null`` drops an entry. Every
    mistake is a LightsegError naming ``<group>.<name><field>`` (``loss.ce.term``); ``example``
    is a class to name in its message."""
    built = {}
    for key, entry in config.items():
        if entry is None:
            continue
        name, options = f"{key}{field}", dict(entry)
        if "_target_" not in options:
            raise LightsegError(
                f"{group}.{name} has no _target_: name its class, e.g. {group}.{name}._target_="
                f"{example} (configs/{group}/*.yaml show the built-in ones)."
            )
        with instantiating(f"{group}.{name} ({options['_target_']})"):
            built[key] = instantiate(options, **task_arguments(options, task), _convert_="all")
        if not isinstance(built[key], kind):
            library = kind.__module__.split(".")[0]
            raise LightsegError(
                f"{group}.{name}._target_={options['_target_']} is not a {library} {kind.__name__}."
            )
    return built

"""The composed config: :func:`validate` checks every ``_target_`` node's keys and value types
(ranges are the classes' business) before any work; the configs' resolvers; the command line."""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import os
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.experimental.callback import Callback as HydraCallback
from hydra.types import RunMode
from hydra.utils import get_object
from omegaconf import DictConfig, ListConfig, OmegaConf

from lightseg import CONFIG_DIR
from lightseg.errors import LightsegError, SweepJob, sweep_summary, user_errors
from lightseg.runs import RunFolder, resume

#: Hydra's own keys in a ``_target_`` node.
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
#: Values replaced by numbers from the training split before anything is built, whatever the
#: key's type (lightseg.data.statistics.resolve_auto).
FROM_TRAINING_SPLIT = {"class_weights": ("auto", "median", "inverse"), "pos_weight": ("auto",)}
RESOLVED_LATER = {value for values in FROM_TRAINING_SPLIT.values() for value in values}
UNKNOWN_KEY = re.compile(
    r"Could not (?:override|delete from config\.|append to config\.) '([^']+)'"
)
MISSING_OPTION = re.compile(r"Could not find '([^']+)/([^'/]+)'")
#: What a value of these annotations may be (a bool is not a number here).
SCALARS = {bool: bool, int: int, float: int | float, str: str}


def image_size_hw(value: Any, key: str = "data.image_size") -> tuple[int, int]:
    """``256`` or ``[256, 320]`` as ``(height, width)``; anything else is a clear error."""
    listed = isinstance(value, Sequence | ListConfig) and not isinstance(value, str)
    sides = list(value) if listed else [value]
    if len(sides) == 1:
        sides = sides * 2
    if len(sides) != 2 or not all(_matches(side, int) and side > 0 for side in sides):
        raise LightsegError(
            f"{key}={_shown(value)} is not an image size: give one number for a square "
            f"({key}=256) or [height, width] ({key}=[256,320]), positive whole pixels."
        )
    return int(sides[0]), int(sides[1])


def register_resolvers() -> None:
    """``${height_of:size}`` and ``${width_of:size}``: either form of ``data.image_size``;
    ``${run_folder:...}`` and ``${hydra_record:...}``: the run folder (configs/hydra/)."""
    resolvers = {
        "height_of": lambda size: image_size_hw(size)[0],
        "width_of": lambda size: image_size_hw(size)[1],
        "hydra_record": resume.hydra_record,
        "run_folder": resume.run_folder,
    }
    for name, resolver in resolvers.items():
        if not OmegaConf.has_resolver(name):  # run_folder creates the folder: once a composition
            OmegaConf.register_new_resolver(name, resolver, use_cache=name == "run_folder")


def plain(node: Any) -> Any:
    """A resolved config node as plain Python containers (what checkpoints and JSON store)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def validate(cfg: DictConfig, choices: Mapping[str, str] | None = None) -> None:
    """Check every ``_target_`` node's keys and value types; raise one clear LightsegError."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        hint = ""
        if "model._target_" in missing:
            hint = " model=custom needs your network class: model._target_=<package.module.Class>."
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
    target, group = node["_target_"], path.split(".")[0].split("[")[0]
    option = (choices or {}).get(group)
    where = f" (config group option {group}={option})" if option else ""
    try:
        function = get_object(str(target))
    except Exception as error:  # ImportError, AttributeError, or errors raised on import
        raise LightsegError(
            f"{path}._target_='{target}' cannot be imported ({type(error).__name__}: {error}). "
            "Check the dotted path; a module of your own must be importable (run from the "
            f"repository root, or add its folder to PYTHONPATH){where}."
        ) from None
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return  # builtins without a signature: instantiate() will tell
    given = [k for k in node if k not in HYDRA_KEYS]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    unknown = [] if takes_any else [k for k in given if k not in parameters]
    if unknown:
        keys = ", ".join(f"{path}.{k}" for k in unknown)
        accepted = [n for n, p in parameters.items() if p.kind != p.VAR_POSITIONAL and n != "self"]
        raise LightsegError(
            f"{keys}: not a setting of {target}{where}. It takes: "
            f"{', '.join(accepted) or 'nothing'}. Remove the key, "
            "or choose the config group option it belongs to."
        )
    try:
        hints = typing.get_type_hints(function.__init__ if inspect.isclass(function) else function)
    except Exception:  # unresolvable annotations: no type check, not an error
        hints = {}
    for key in given:  # null means "default" or "lightseg fills it in" (schedule lengths)
        hint = hints.get(key)
        if isinstance(node[key], str) and node[key] in RESOLVED_LATER:
            continue  # replaced by numbers from the training split before anything is built
        if hint is not None and node[key] is not None and _matches(node[key], hint) is False:
            raise LightsegError(
                f"{path}.{key}={_shown(node[key])} is not valid: {target} takes {key}: "
                f"{str(hint).replace('typing.', '').replace('NoneType', 'None')}{where}."
            )


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
        results = {_matches(value, a) for a in args}
        return True if True in results else False if results == {False} else None
    if isinstance(hint, type) and hint in SCALARS:
        return isinstance(value, SCALARS[hint]) and (hint is bool or not isinstance(value, bool))
    if origin in (list, tuple, Sequence):  # typing.Sequence's origin too
        return isinstance(value, list | tuple)
    if isinstance(value, dict) and "_target_" in value:
        return None  # a node instantiated into the object the hint names
    if inspect.isclass(hint) and isinstance(value, str | int | float | bool):
        if issubclass(hint, os.PathLike):
            return isinstance(value, str)
        if issubclass(hint, torch.Tensor):  # e.g. a learning rate: a number or a tensor
            return _matches(value, float)
    return None


def _shown(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def compose_config(
    overrides: Sequence[str] = (), config_name: str = "train", hydra: bool = False
) -> DictConfig:
    """``configs/<config_name>.yaml`` composed outside a Hydra app (``hydra``: with its node)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name, list(overrides), return_hydra_config=hydra)


# --- the command line: Hydra's app, its sweep jobs, the nearest valid key or option ------------

T = TypeVar("T")


def app(config_name: str) -> Callable[[Callable[[DictConfig], T]], Callable[[], T | None]]:
    """Hydra's app for ``configs/<config_name>.yaml``, every entry point's command line: a mistake
    ends in one paragraph and a non-zero exit (``HYDRA_FULL_ERROR`` hands Hydra's errors to
    :func:`explain`). In a sweep (-m) a failed job is reported, the sweep goes on
    (:class:`SweepJob`), and the command ends with a summary of the failed jobs."""

    def decorate(task: Callable[[DictConfig], T]) -> Callable[[], T | None]:
        jobs: list[SweepJob] = []  # this command's sweep jobs, in the order they ran
        command = os.getpid()  # the process of the command line (a worker gets a copy)

        @hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=config_name)
        @functools.wraps(task)
        def hydra_app(cfg: DictConfig) -> T | None:
            hydra_cfg = HydraConfig.get()
            if hydra_cfg.mode != RunMode.MULTIRUN:
                with user_errors():  # a single run's error: its paragraph and exit code
                    return task(cfg)
            if os.getpid() != command:  # a launcher's worker (SLURM): Hydra's record of
                return task(cfg)  # the job takes its error back to the sweep, which raises it
            job = SweepJob(
                hydra_cfg.job.num,
                hydra_cfg.runtime.output_dir,
                list(hydra_cfg.overrides.task),
                hydra_cfg.sweep.dir,
            )
            jobs.append(job)
            with user_errors():  # an error that stops the sweep: its paragraph and exit code
                return job.run(task, cfg)

        @functools.wraps(task)
        def main() -> T | None:
            spec = sys.modules["__main__"].__spec__
            if task.__module__ == "__main__" and spec is not None:  # python -m lightseg.<x>:
                # the module's importable copy, which a launcher (SLURM) pickles by reference
                return getattr(importlib.import_module(spec.name), task.__name__)()
            jobs.clear()
            SweepFolder.path = None
            given, stopped = os.environ.get("HYDRA_FULL_ERROR"), ""
            os.environ.setdefault("HYDRA_FULL_ERROR", "1")
            with user_errors():
                try:
                    result = hydra_app()
                except HydraException as error:
                    GlobalHydra.instance().clear()  # the failed app's; explaining composes anew
                    overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
                    raise LightsegError(explain(error, overrides, config_name)) from None
                except Exception as error:  # the sweeper's own end (Optuna: no trial finished)
                    elsewhere = not jobs and SweepFolder.path is not None  # in workers (SLURM)
                    jobs.extend(recorded_jobs(SweepFolder.path) if elsewhere else [])
                    if not any(job.failure for job in jobs):
                        raise
                    result = None
                    if not elsewhere:  # a worker's error is its job's, listed in the summary
                        stopped = f" The sweep then stopped: {type(error).__name__}: {error}"
                finally:  # only this app's errors come here; later apps keep Hydra's handling
                    if given is None:
                        os.environ.pop("HYDRA_FULL_ERROR", None)
                if any(job.failure for job in jobs):
                    raise LightsegError(sweep_summary(jobs) + stopped)
                return result

        return main

    return decorate


class SweepFolder(HydraCallback):
    """Notes the sweep's folder (configs/hydra/default.yaml): where a launcher's workers ran the
    jobs (SLURM), the summary reads how each ended from it."""

    path: str | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        SweepFolder.path = config.hydra.sweep.dir


def recorded_jobs(sweep_dir: str) -> list[SweepJob]:
    """The sweep's jobs as their folders' run_info.json record them."""
    folders = [f for f in Path(sweep_dir).glob("*") if f.name.isdigit()]
    return [
        SweepJob(int(folder.name), str(folder), info.get("overrides", []), sweep_dir, failure)
        for folder in sorted(folders, key=lambda f: int(f.name))
        if (info := RunFolder(folder).info())
        for failure in [info.get("message") if info.get("status") == "failed" else None]
    ]


def explain(error: HydraException, overrides: list[str], config_name: str) -> str:
    """Hydra's message, plus the nearest valid key or option when there is one."""
    message = str(error).split("\nConfig search path:")[0].strip()
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        message += "\n" + str(cause).strip().splitlines()[0]
    if match := UNKNOWN_KEY.search(message):
        key = match.group(1)
        rest = [o for o in overrides if resume.override_key(o) != key]
        message += suggest_key(key, rest, config_name)
    elif match := MISSING_OPTION.search(message):
        group, option = match.groups()
        found = difflib.get_close_matches(option, group_options(group), n=1, cutoff=0.5)
        if found:
            message += f"\nDid you mean {group}={found[0]}?"
    return message


def suggest_key(key: str, overrides: list[str], config_name: str) -> str:
    """The other options of ``key``'s group that have it (``data.source.mask_pattern`` on PH2),
    else the closest key of this composition."""
    group = key.split(".")[0]
    composed = _compose_what_works(overrides, config_name)
    chosen = OmegaConf.select(composed, f"hydra.runtime.choices.{group}", default=None)
    others = [o for o in overrides if resume.override_key(o) != group]
    options = [
        option
        for option in group_options(group)
        if option != chosen and _has_key(key, [*others, f"{group}={option}"], config_name)
    ]
    if options:
        listed = ", ".join(f"{group}={o}" for o in options[:6])
        now = f"not of {group}={chosen}" if chosen else f"and no {group} is chosen"
        return f"\n{key} is a setting of {listed}, {now}."
    tree = OmegaConf.to_container(composed, resolve=False)
    keys = [k for k in dotted_keys(tree) if not k.startswith("hydra")]
    suggestion = closest(key, keys)
    return f"\nDid you mean '{suggestion}'?" if suggestion else ""


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))


def _has_key(key: str, overrides: list[str], config_name: str) -> bool:
    try:
        composed = compose_config(overrides, config_name)
    except HydraException:
        return False
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(composed, parent, default=None) if parent else composed
    return isinstance(node, DictConfig) and leaf in node


def _compose_what_works(overrides: list[str], config_name: str) -> DictConfig:
    """The config with every override that fails left out (for the list of valid keys)."""
    overrides = [o for o in overrides if "," not in o.split("=", 1)[-1]]  # no sweeps here
    while True:
        try:
            return compose_config(overrides, config_name, hydra=True)
        except HydraException as error:
            match = UNKNOWN_KEY.search(str(error))
            bad = match.group(1) if match else None
            remaining = [o for o in overrides if resume.override_key(o) != bad]
            if bad is None or len(remaining) == len(overrides):
                return compose_config([], config_name, hydra=True)
            overrides = remaining


def dotted_keys(node: Any, prefix: str = "") -> Iterator[str]:
    """Every dotted key of a plain config, inner nodes too (``trainer``, ``trainer.devices``)."""
    for name, value in node.items() if isinstance(node, dict) else ():
        yield f"{prefix}{name}"
        yield from dotted_keys(value, f"{prefix}{name}.")


def closest(key: str, keys: list[str]) -> str | None:
    """The valid key nearest to ``key``: by the whole dotted path, else by its last part."""
    found = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if found:
        return found[0]
    leaves = {candidate.rsplit(".", 1)[-1]: candidate for candidate in reversed(keys)}  # 1st wins
    found = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=1, cutoff=0.75)
    return leaves[found[0]] if found else None

"""The command line before Hydra starts: overrides checked, resume requests resolved.

* An override Hydra cannot apply gets Hydra's message plus the closest valid key or option.
* ``ckpt_path=last`` (or ``resume=auto``) becomes the newest unfinished run of the experiment:
  its ``last.ckpt``, its overrides, and its folder as Hydra's run folder, so the run continues
  where it stopped, with the same W&B run. ``ckpt_path=<run>/checkpoints/x.ckpt`` does the same
  for that run.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from lightseg import CONFIG_DIR
from lightseg.errors import LightsegError
from lightseg.utils.run_info import read_run_info

RESUME_KEYS = ("ckpt_path", "resume")
MULTIRUN_FLAGS = ("-m", "--multirun")
UNKNOWN_KEY = re.compile(r"Could not (?:override|delete from config\.) '([^']+)'")
MISSING_OPTION = re.compile(r"Could not find '([^']+)/([^'/]+)'")


def prepare_arguments(args: list[str], config_name: str = "train") -> list[str]:
    """The arguments to hand to Hydra, or a LightsegError that says what is wrong.

    ``-m`` moves to the front: Hydra's parser rejects overrides on both sides of it, and
    ``make train ARGS="-m ..."`` puts ``experiment=...`` before it.
    """
    flags = [a for a in args if a in MULTIRUN_FLAGS]
    return flags + [a for a in _prepared(args, config_name) if a not in MULTIRUN_FLAGS]


def _prepared(args: list[str], config_name: str) -> list[str]:
    if any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in args):
        return args  # --help, --cfg, -cn ...: Hydra's own business
    overrides = [a for a in args if a not in MULTIRUN_FLAGS]
    cfg = compose_checked(overrides, config_name)
    ckpt, resume = cfg.get("ckpt_path"), cfg.get("resume")
    if resume not in (None, "auto"):
        raise LightsegError(f"resume={resume} is not an option: use resume=auto, or leave it out.")
    if ckpt is None and resume is None:
        return args
    if any(a in MULTIRUN_FLAGS for a in args):
        raise LightsegError(
            "ckpt_path and resume=auto continue a single run, not a sweep. Continue a sweep job "
            "on its own: python -m lightseg.train ckpt_path=<job folder>/checkpoints/last.ckpt"
        )
    if ckpt is None or str(ckpt) == "last":
        runs = Path(cfg.paths.log_dir) / str(cfg.name) / "runs"
        run = newest_unfinished_run(runs)
        if run is None:
            if ckpt is None:  # resume=auto with nothing to resume: a fresh run
                return args
            raise LightsegError(
                f"ckpt_path=last: no unfinished run of experiment '{cfg.name}' under '{runs}' "
                "(unfinished: it has checkpoints/last.ckpt but no metrics.json, and did not "
                "fail). Start a fresh run without ckpt_path, or name a checkpoint file: "
                "ckpt_path=logs/<name>/runs/<time>/checkpoints/last.ckpt."
            )
        checkpoint = run / "checkpoints" / "last.ckpt"
    else:
        checkpoint = existing_checkpoint(str(ckpt))
        run = run_folder_of(checkpoint)
        if run is None:  # a checkpoint from elsewhere: continue its training in a new folder
            return args
    kept = [a for a in args if override_key(a) not in (*RESUME_KEYS, "hydra.run.dir")]
    return [
        *merge_overrides(previous_overrides(run), kept),
        f"ckpt_path={quoted(checkpoint)}",
        f"hydra.run.dir={quoted(run)}",
    ]


def existing_checkpoint(path: str) -> Path:
    checkpoint = Path(path)
    if not checkpoint.is_file():
        raise LightsegError(
            f"ckpt_path='{path}' does not exist. Runs keep their checkpoints in "
            "logs/<name>/runs/<time>/checkpoints/ (last.ckpt, best.ckpt); ckpt_path=last picks "
            "the newest unfinished run of the experiment."
        )
    return checkpoint


def compose_checked(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose the config as Hydra will (first value of each sweep); explain what fails."""
    checked = [_first_of_sweep(o) for o in overrides if not override_key(o).startswith("hydra")]
    checked = [o for o in checked if o is not None]
    try:
        return _compose(checked, config_name)
    except HydraException as error:
        raise LightsegError(explain(error, checked, config_name)) from None


def _compose(overrides: list[str], config_name: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def _first_of_sweep(override: str) -> str | None:
    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
    except HydraException:
        return override  # let compose report the syntax error
    if not parsed.is_sweep_override():
        return override
    try:
        first = next(iter(parsed.sweep_string_iterator()))
    except (ValueError, StopIteration):  # interval() etc.: only a sweeper can pick a value
        return None
    return f"{parsed.get_key_element()}={first}"


def override_key(override: str) -> str:
    """``trainer.max_epochs`` for ``+trainer.max_epochs=3``; the text before ``=`` otherwise."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def explain(error: HydraException, overrides: list[str], config_name: str) -> str:
    """Hydra's message, plus the nearest valid key or option when there is one."""
    message = str(error).split("\nConfig search path:")[0].strip()
    cause = error.__cause__
    if cause is not None and str(cause).strip():
        message += "\n" + str(cause).strip().splitlines()[0]
    if match := UNKNOWN_KEY.search(message):
        key = match.group(1)
        rest = [o for o in overrides if override_key(o) != key]
        suggestion = closest(key, config_keys(_compose_what_works(rest, config_name)))
        if suggestion:
            message += f"\nDid you mean '{suggestion}'?"
    elif match := MISSING_OPTION.search(message):
        group, option = match.groups()
        options = sorted(p.stem for p in (Path(CONFIG_DIR) / group).glob("*.yaml"))
        found = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
        if found:
            message += f"\nDid you mean {group}={found[0]}?"
        if group == "hydra/sweeper":
            message += "\nSweeper plugins are optional extras: pip install -e '.[optuna]'"
    return message


def _compose_what_works(overrides: list[str], config_name: str) -> DictConfig:
    """The config with every override that fails left out (for the list of valid keys)."""
    overrides = list(overrides)
    while True:
        try:
            return _compose(overrides, config_name)
        except HydraException as error:
            match = UNKNOWN_KEY.search(str(error))
            bad = match.group(1) if match else None
            remaining = [o for o in overrides if override_key(o) != bad]
            if bad is None or len(remaining) == len(overrides):
                return _compose([], config_name)
            overrides = remaining


def config_keys(cfg: DictConfig) -> list[str]:
    """Every dotted key of a config, inner nodes included (``trainer``, ``trainer.max_epochs``)."""
    keys: list[str] = []

    def walk(node, prefix: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                key = f"{prefix}{name}"
                keys.append(key)
                walk(value, key + ".")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return keys


def closest(key: str, keys: list[str]) -> str | None:
    """The valid key nearest to ``key``: by the whole dotted path, else by its last part."""
    found = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if found:
        return found[0]
    leaves: dict[str, str] = {}
    for candidate in keys:
        leaves.setdefault(candidate.rsplit(".", 1)[-1], candidate)
    found = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=1, cutoff=0.75)
    return leaves[found[0]] if found else None


def newest_unfinished_run(runs: Path) -> Path | None:
    """The newest run folder with a ``last.ckpt``, no ``metrics.json`` and no recorded failure."""
    if not runs.is_dir():
        return None
    for run in sorted(
        (p for p in runs.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True
    ):
        info = read_run_info(run) or {}
        if (
            (run / "checkpoints" / "last.ckpt").is_file()
            and not (run / "metrics.json").is_file()
            and info.get("status") != "failed"
        ):
            return run
    return None


def run_folder_of(checkpoint: Path) -> Path | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), if it is one."""
    run = checkpoint.resolve().parent.parent
    if checkpoint.resolve().parent.name == "checkpoints" and (run / ".hydra").is_dir():
        return run
    return None


def previous_overrides(run: Path) -> list[str]:
    """The overrides the run was started with (Hydra keeps them in .hydra/overrides.yaml)."""
    path = run / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(path.read_text()) if path.is_file() else []
    return [o for o in overrides or [] if override_key(o) not in RESUME_KEYS]


def merge_overrides(first: list[str], then: list[str]) -> list[str]:
    """``first`` with each key that ``then`` sets again replaced by the later value."""
    later = {override_key(o) for o in then}
    return [o for o in first if override_key(o) not in later] + list(then)


def quoted(path: Path) -> str:
    """A path as a Hydra override value (quoted: paths may hold characters Hydra parses)."""
    text = str(path).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"

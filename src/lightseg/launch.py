"""The command line before Hydra starts: overrides checked, the run folder chosen.

Two things, and nothing else, happen before Hydra:

* an override Hydra cannot apply gets Hydra's message plus the closest valid key or option
  (Hydra itself would only print its message);
* the run folder is chosen and handed to Hydra as ``hydra.run.dir``: a new, unique one, or
  the folder of the run a resume request continues (lightseg.runs.resume has the rules).
  A continued run's ``.hydra/`` record is left as it was (``hydra.output_subdir=null``).
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from lightseg import CONFIG_DIR
from lightseg.config import compose_config
from lightseg.errors import LightsegError
from lightseg.runs import record
from lightseg.runs.resume import (
    choose_run_folder,
    explicit_checkpoint,
    override_key,
    resume_requested,
)

MULTIRUN_FLAGS = ("-m", "--multirun")
UNKNOWN_KEY = re.compile(r"Could not (?:override|delete from config\.) '([^']+)'")
MISSING_OPTION = re.compile(r"Could not find '([^']+)/([^'/]+)'")
#: How many processes a launcher (torchrun, srun) started for one job.
PROCESS_COUNT_VARIABLES = ("WORLD_SIZE", "SLURM_NTASKS")


def prepare_arguments(args: list[str], config_name: str = "train") -> list[str]:
    """The arguments to hand to Hydra, or a LightsegError that says what is wrong.

    ``-m`` moves to the front: Hydra's parser rejects overrides on both sides of it, and
    ``make train ARGS="-m ..."`` puts ``experiment=...`` before it.
    """
    record.TYPED_ARGUMENTS[:] = args
    flags = [a for a in args if a in MULTIRUN_FLAGS]
    overrides = [a for a in args if a not in MULTIRUN_FLAGS]
    if any(a.startswith("-") for a in overrides):
        return args  # --help, --cfg, -cn ...: Hydra's own business
    cfg = compose_checked(overrides, config_name)
    return flags + overrides + run_folder_overrides(cfg, overrides, multirun=bool(flags))


def run_folder_overrides(cfg: DictConfig, overrides: list[str], multirun: bool) -> list[str]:
    """``hydra.run.dir`` (and ``hydra.output_subdir=null`` for a continued run) to add."""
    given = {override_key(o): o.split("=", 1)[-1] for o in overrides}
    if multirun:  # each job's folder is the sweep's; resume=auto continues a requeued job there
        ckpt = explicit_checkpoint(cfg)
        if resume_requested(cfg) and ckpt is not None:
            raise LightsegError(
                f"ckpt_path={ckpt} in a sweep would start every job from that one checkpoint. "
                "Continue one sweep job on its own (python -m lightseg.train ckpt_path=<job "
                "folder>/checkpoints/last.ckpt), or give the sweep resume=auto: each job then "
                "continues its own folder when it is requeued."
            )
        return []
    explicit = given.get("hydra.run.dir")
    if explicit is None and launched_processes() > 1:
        raise LightsegError(
            f"This is one of {launched_processes()} processes of a multi-process launch (srun, "
            "torchrun), but no hydra.run.dir is given, so each process would pick a folder of "
            "its own. Give every process the same one, e.g. hydra.run.dir=logs/<name>/runs/"
            "job-$SLURM_JOB_ID (scripts/slurm/train.sbatch does)."
        )
    folder, continues = choose_run_folder(cfg, explicit.strip("'\"") if explicit else None)
    added = [] if explicit else [f"hydra.run.dir={quoted(folder)}"]
    if continues and "hydra.output_subdir" not in given:
        added.append("hydra.output_subdir=null")
    return added


def launched_processes() -> int:
    counts = [os.environ.get(name, "1") for name in PROCESS_COUNT_VARIABLES]
    return max(int(c) if c.isdigit() else 1 for c in counts)


def compose_checked(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose the config as Hydra will (first value of each sweep); explain what fails."""
    checked = [_first_of_sweep(o) for o in overrides if _composes(o)]
    checked = [o for o in checked if o is not None]
    try:
        return compose_config(checked, config_name)
    except HydraException as error:
        raise LightsegError(explain(error, checked, config_name)) from None


def _composes(override: str) -> bool:
    """Whether an override changes the composed config (hydra.* do not, but the search path)."""
    key = override_key(override)
    return not key.startswith("hydra") or key == "hydra.searchpath"


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
            return compose_config(overrides, config_name)
        except HydraException as error:
            match = UNKNOWN_KEY.search(str(error))
            bad = match.group(1) if match else None
            remaining = [o for o in overrides if override_key(o) != bad]
            if bad is None or len(remaining) == len(overrides):
                return compose_config([], config_name)
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


def quoted(path: Path) -> str:
    """A path as a Hydra override value (quoted: paths may hold characters Hydra parses)."""
    text = str(path).replace("\\", "\\\\").replace("'", "\\'")
    return f"'{text}'"

"""Which folder a run goes to, and what it continues from.

Resume requests (``ckpt_path=<file>``, ``ckpt_path=last``, ``resume=auto``) resolve in order:

1. an explicit checkpoint file: continue it, in its run folder (a checkpoint from elsewhere
   starts a new folder);
2. an explicit run folder (``hydra.run.dir=X``, how job scripts start): continue it when it
   holds ``checkpoints/last.ckpt``, else start fresh in it;
3. the newest unfinished run of the experiment (``logs/<name>/runs/``): a ``last.ckpt``, no
   ``metrics.json``, not failed, and not held by a live process (run.lock). ``resume=auto``
   starts a new run when there is none; ``ckpt_path=last`` says so.

A continued run keeps its own config (``.hydra/config.yaml``); overrides given when resuming
apply to that invocation only and are recorded with it in run_info.json.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from lightning.fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from lightseg import CONFIG_DIR
from lightseg.errors import LightsegError
from lightseg.runs.folder import RunFolder, newest_first, runs_of
from lightseg.utils.locks import describe, held_by_live_process

RESUME_KEYS = ("ckpt_path", "resume")
STAMP = "%Y-%m-%d_%H-%M-%S"


def override_key(override: str) -> str:
    """``trainer.max_epochs`` for ``+trainer.max_epochs=3``; the text before ``=`` otherwise."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def resume_requested(cfg: DictConfig) -> bool:
    resume = cfg.get("resume")
    if resume not in (None, "auto"):
        raise LightsegError(f"resume={resume} is not an option: use resume=auto, or leave it out.")
    return cfg.get("ckpt_path") is not None or resume == "auto"


def explicit_checkpoint(cfg: DictConfig) -> str | None:
    """``ckpt_path`` where it names a checkpoint file; None where it is unset or ``last``."""
    ckpt = cfg.get("ckpt_path")
    return None if ckpt is None or str(ckpt) == "last" else ckpt


def existing_checkpoint(path: str | Path) -> Path:
    checkpoint = Path(path)
    if not checkpoint.is_file():
        raise LightsegError(
            f"ckpt_path='{path}' does not exist. Runs keep their checkpoints in "
            "logs/<name>/runs/<time>/checkpoints/ (last.ckpt, best.ckpt); ckpt_path=last picks "
            "the newest unfinished run of the experiment."
        )
    return checkpoint


def refuse_if_alive(run: RunFolder) -> None:
    owner = held_by_live_process(run.path)
    if owner is not None:
        raise LightsegError(
            f"Run folder '{run}' is in use by a training process that is still alive "
            f"({describe(owner)}); a run is never taken over while it trains. Wait for it to "
            "end, or start a new run (without ckpt_path / resume)."
        )


def newest_resumable(runs: Path) -> RunFolder | None:
    """The newest unfinished run under ``runs`` that no live process holds."""
    for run in newest_first(runs):
        if run.resumable and held_by_live_process(run.path) is None:
            return run
    return None


def new_run_folder(parent: Path, now: datetime | None = None) -> Path:
    """A new folder ``parent/<time>`` (``<time>_2``, ... when taken), created atomically, so
    runs started in the same second (array jobs, two terminals) never share one."""
    stamp = (now or datetime.now()).strftime(STAMP)
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        folder = parent / (stamp if attempt == 1 else f"{stamp}_{attempt}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise LightsegError(f"Could not create a new run folder under '{parent}'.")


def choose_run_folder(cfg: DictConfig, explicit: str | None) -> tuple[Path, bool]:
    """``(run folder, continues an existing run)`` for a single (not multirun) training."""
    runs = runs_of(cfg.paths.log_dir, cfg.name)
    resume = resume_requested(cfg)
    if explicit is not None:
        run = RunFolder(explicit)
        if rank_zero_only.rank == 0:  # the other processes of a job join the first one's run
            refuse_if_alive(run)
        return run.path, resume and run.hydra.is_dir() and run.last.is_file()
    checkpoint = explicit_checkpoint(cfg)
    if checkpoint is not None:
        run = RunFolder.of_checkpoint(existing_checkpoint(checkpoint))
        if run is None:  # a checkpoint from elsewhere: continue its training in a new folder
            return new_run_folder(runs), False
        refuse_if_alive(run)
        return run.path, True
    if resume:
        run = newest_resumable(runs)
        if run is not None:
            return run.path, True
        if cfg.get("ckpt_path") is not None:
            raise LightsegError(
                f"ckpt_path=last: no unfinished run of experiment '{cfg.name}' under '{runs}' "
                "(unfinished: it has checkpoints/last.ckpt but no metrics.json, did not fail, "
                "and no live process trains in it). Start a fresh run without ckpt_path, use "
                "resume=auto (continue if there is one, else start), or name a checkpoint: "
                "ckpt_path=logs/<name>/runs/<time>/checkpoints/last.ckpt."
            )
    return new_run_folder(runs), False


def checkpoint_to_resume(cfg: DictConfig, run: RunFolder) -> str | None:
    """The checkpoint training continues from in ``run`` (None: a fresh start)."""
    if not resume_requested(cfg):
        return None
    checkpoint = explicit_checkpoint(cfg)
    if checkpoint is not None:
        return str(existing_checkpoint(checkpoint))
    return str(run.last) if run.last.is_file() else None


def group_names() -> set[str]:
    """Config groups (``model``, ``data/transforms``): overrides of these pick options."""
    root = Path(CONFIG_DIR)
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}


def continued_config(cfg: DictConfig, run: RunFolder, overrides: list[str]) -> DictConfig:
    """The config of the run being continued, with this invocation's value overrides.

    ``cfg`` is what this invocation composed; the run's own composition (``.hydra/config.yaml``,
    interpolations intact, so paths follow the folder) wins except for the keys that
    ``overrides`` set. Choosing another config group option for a run in progress is refused.
    """
    saved_path = run.hydra_config
    if not saved_path.is_file():
        return cfg
    saved = OmegaConf.load(saved_path)
    groups, choices = group_names(), run.group_choices()
    OmegaConf.set_struct(saved, False)
    for override in overrides:
        key = override_key(override)
        if key in RESUME_KEYS or key.startswith("hydra"):
            continue
        if key in groups:
            value = override.split("=", 1)[-1]
            if choices and choices.get(key) != value:
                raise LightsegError(
                    f"{override}: the run in '{run}' was composed with {key}="
                    f"{choices.get(key)}; a run in progress cannot switch config group options. "
                    "Start a new run for another choice, or leave the override out."
                )
            continue
        if override.startswith("~"):
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(saved, parent) if parent else saved
            if node is not None and leaf in node:
                del node[leaf]
            continue
        OmegaConf.update(saved, key, OmegaConf.select(cfg, key), merge=False, force_add=True)
    for key in RESUME_KEYS:
        saved[key] = cfg.get(key)
    OmegaConf.set_struct(saved, True)
    return saved

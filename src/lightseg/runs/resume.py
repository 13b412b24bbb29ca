"""Which folder a run writes to, and what it continues from: decided here and nowhere else
(the rules: README, "Resume after an interruption"). Hydra asks :func:`run_folder` for
``hydra.run.dir`` and :func:`hydra_record` whether to write ``.hydra/``; ``train`` asks
:func:`checkpoint_for` what to load and :func:`continuation` how to recompose a continued run.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path

from lightseg.errors import LightsegError
from lightseg.runs.folder import RunFolder, newest_first, runs_of
from lightseg.utils.locks import describe, held_by_live_process
from lightseg.utils.ranks import is_first_process

STAMP = "%Y-%m-%d_%H-%M-%S"


def override_key(override: str) -> str:
    """``trainer.max_epochs`` for ``+trainer.max_epochs=3``; the text before ``=`` otherwise."""
    return override.split("=", 1)[0].lstrip("+~").split("@", 1)[0]


def _given(value) -> str | None:
    """A config value as the resolvers receive it (``None``/``"None"`` when unset)."""
    return None if value in (None, "None", "null", "") else str(value)


def check_resume(resume) -> bool:
    """Whether ``resume=auto`` is set; any other value is a clear error."""
    resume = _given(resume)
    if resume not in (None, "auto"):
        raise LightsegError(f"resume={resume} is not an option: use resume=auto, or leave it out.")
    return resume == "auto"


def new_run_folder(parent: Path, now: datetime | None = None) -> Path:
    """A new folder ``parent/<time>`` (``<time>_2``, ... when taken), created atomically, so
    runs started in the same second (array jobs, two terminals) never share one."""
    stamp = (now or datetime.now()).strftime(STAMP)
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, 1000):
        folder = parent / (stamp if attempt == 1 else f"{stamp}_{attempt}")
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
            return folder
    raise LightsegError(f"Could not create a new run folder under '{parent}'.")


def existing_checkpoint(path: str | Path) -> Path:
    checkpoint = Path(path)
    if not checkpoint.is_file():
        raise LightsegError(
            f"ckpt_path='{path}' does not exist. Runs keep their checkpoints in "
            "logs/<name>/runs/<time>/checkpoints/ (last.ckpt, best.ckpt); ckpt_path=last picks "
            "the newest unfinished run of the experiment, ckpt_path=<run folder> continues that "
            "run."
        )
    return checkpoint


def continued_run(log_dir, name, ckpt_path, resume) -> RunFolder | None:
    """The existing run a resume request continues (None: a new folder)."""
    ckpt_path, auto = _given(ckpt_path), check_resume(resume)
    runs = runs_of(log_dir, name)
    if ckpt_path is None and not auto:
        return None
    if ckpt_path not in (None, "last"):
        if Path(ckpt_path).is_dir():
            run = RunFolder(ckpt_path)
            if not run.last.is_file():
                raise LightsegError(
                    f"ckpt_path='{ckpt_path}' is a folder without checkpoints/last.ckpt: not a "
                    "run that can be continued. Name a run folder (logs/<name>/runs/<time>) or "
                    "a checkpoint file."
                )
            return run
        return RunFolder.of_checkpoint(existing_checkpoint(ckpt_path))
    free = (r for r in newest_first(runs) if r.resumable and held_by_live_process(r.path) is None)
    run = next(free, None)
    if run is None and ckpt_path == "last":
        raise LightsegError(
            f"ckpt_path=last: no unfinished run of experiment '{name}' under '{runs}' "
            "(unfinished: it has checkpoints/last.ckpt but no metrics.json, did not fail, and "
            "no live process trains in it). Start a fresh run without ckpt_path, use "
            "resume=auto (continue if there is one, else start), or name a checkpoint: "
            "ckpt_path=logs/<name>/runs/<time>/checkpoints/last.ckpt."
        )
    return run


def run_folder(log_dir, name, ckpt_path, resume) -> str:
    """``hydra.run.dir``: the run a resume request continues, else a new one (a Hydra resolver,
    cached: called once per composition)."""
    run = continued_run(log_dir, name, ckpt_path, resume)
    if run is not None:
        owner = held_by_live_process(run.path)
        if owner is not None and is_first_process():  # the other ranks join rank 0's run
            raise LightsegError(
                f"Run folder '{run}' is in use by a training process that is still alive "
                f"({describe(owner)}); a run is never taken over while it trains. Wait for it "
                "to end, or start a new run (without ckpt_path / resume)."
            )
        return str(run.path)
    # how many processes a launcher (torchrun, srun) started for this job
    counts = [os.environ.get(name, "1") for name in ("WORLD_SIZE", "SLURM_NTASKS")]
    processes = max(int(c) if c.isdigit() else 1 for c in counts)
    if processes > 1:
        raise LightsegError(
            f"This is one of {processes} processes of a multi-process launch (srun, "
            "torchrun), but no hydra.run.dir is given, so each process would pick a folder of "
            "its own. Give every process the same one, e.g. hydra.run.dir=logs/<name>/runs/"
            "job-$SLURM_JOB_ID (scripts/slurm/train.sbatch does)."
        )
    return str(new_run_folder(runs_of(log_dir, name)))


def hydra_record(output_dir, ckpt_path, resume) -> str | None:
    """``hydra.output_subdir``: ``.hydra`` for a run that starts, None (keep the record it
    started with) for one that continues."""
    continues = _given(ckpt_path) is not None or check_resume(resume)
    run = RunFolder(output_dir)
    return None if continues and run.hydra.is_dir() and run.last.is_file() else ".hydra"


def checkpoint_for(ckpt_path, resume, run: RunFolder) -> str | None:
    """The checkpoint training continues from in ``run`` (None: a fresh start)."""
    ckpt_path, auto = _given(ckpt_path), check_resume(resume)
    if ckpt_path is not None and not Path(ckpt_path).is_dir() and ckpt_path != "last":
        return str(existing_checkpoint(ckpt_path))
    if ckpt_path is None and not auto:
        return None
    if run.last.is_file():
        return str(run.last)
    if ckpt_path is not None:  # `last` or a folder, and this folder has nothing to continue
        raise LightsegError(
            f"ckpt_path={ckpt_path}: '{run}' has no checkpoints/last.ckpt to continue from."
        )
    return None  # resume=auto in a fresh folder


def continuation(run: RunFolder, overrides: list[str]) -> list[str] | None:
    """The overrides that compose ``run`` as it was started plus this command's values (which
    win; another group option is refused), or None when this command already composed it so."""
    saved = [o for o in run.overrides() if not _resume_or_hydra(o)]
    own = [o for o in overrides if not _resume_or_hydra(o)]
    if not run.hydra.is_dir() or set(saved) <= set(own):
        return None
    choices, given = run.group_choices(), {override_key(o): o for o in own}
    for key, override in given.items():
        value = override.split("=", 1)[-1]
        if key in choices and not override.startswith("~") and str(choices[key]) != value:
            raise LightsegError(
                f"{override}: the run in '{run}' was composed with {key}={choices[key]}; a run "
                "in progress cannot switch config group options. Start a new run for another "
                "choice, or leave the override out."
            )
    kept = [o for o in saved if override_key(o) not in given]
    return [*kept, *(o for o in overrides if override_key(o) not in ("ckpt_path", "resume"))]


def quoted(path: str | Path) -> str:
    """A path as a Hydra override value (quoted: paths may hold characters Hydra parses)."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _resume_or_hydra(override: str) -> bool:
    key = override_key(override)
    return key in ("ckpt_path", "resume") or key.startswith("hydra")

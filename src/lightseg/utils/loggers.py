"""Experiment loggers that never prompt, hang or lose a run's history.

* W&B: online with credentials, offline otherwise, and offline as well when the server cannot
  be reached; one W&B run id per run folder, so a resumed run continues the same W&B run.
  Quiet by default: W&B's own start and summary messages are off (its warnings and errors
  stay), and lightseg says in one line where the run is.
* CSV: appends to ``metrics.csv`` on resume (Lightning's CSVLogger deletes it).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import secrets
import string
from collections.abc import Iterator
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightseg.runs.folder import RunFolder

log = logging.getLogger(__name__)


def wandb_credentials_present() -> bool:
    """True when an API key is in the environment or in ~/.netrc (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def wandb_run_id(save_dir: Path) -> str:
    """The run folder's W&B id: the stored one, the sweep agent's, or a new one (then stored)."""
    path = RunFolder(save_dir).wandb_run_id  # read again when the run is resumed
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    alphabet = string.ascii_lowercase + string.digits  # what W&B's own ids use
    run_id = os.environ.get("WANDB_RUN_ID") or "".join(secrets.choice(alphabet) for _ in range(8))
    if rank_zero_only.rank == 0:
        path.write_text(run_id + "\n")
    return run_id


class FallbackWandbLogger(WandbLogger):
    """A WandbLogger that goes offline, instead of failing, when W&B cannot be reached."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Lightning always passes `anonymous` to wandb.init, even unset, and W&B warns that
        # the setting has no effect. Leave it out when it is unset.
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @property
    @rank_zero_experiment
    def experiment(self):
        started = self._experiment is not None
        run = self._start()
        if not started and run is not None and run.settings.mode == "online":
            log.info("W&B run: %s", run.url)
        return run

    def _start(self):
        try:
            return WandbLogger.experiment.fget(self)
        except Exception as error:  # wandb raises many types for network and auth problems
            if self._wandb_init.get("mode") == "offline":
                raise
            log.warning(
                "W&B is unreachable (%s: %s); logging offline to %s instead. Upload later "
                "with `wandb sync %s/wandb/offline-run-*`.",
                type(error).__name__,
                error,
                self.save_dir,
                self.save_dir,
            )
            import wandb

            wandb.teardown()  # the failed start keeps the run id taken in W&B's service
            self._wandb_init["mode"] = "offline"
            self._experiment = None
            return WandbLogger.experiment.fget(self)


def wandb_logger(
    mode: str = "auto", save_dir: str = ".", init_timeout: float = 60, quiet: bool = True, **kwargs
) -> WandbLogger:
    """A WandbLogger; ``mode=auto`` means online with credentials, otherwise offline.

    ``init_timeout`` bounds how long the start waits for the server before going offline.
    ``quiet`` turns off W&B's informational messages (start banner, run history and summary
    at the end); its warnings and errors are shown either way.
    """
    import wandb

    mode = os.environ.get("WANDB_MODE", mode)
    if mode == "auto":
        mode = "online" if wandb_credentials_present() else "offline"
        if mode == "offline":
            log.info(
                "W&B: no credentials found, logging offline to %s (upload later with "
                "`wandb sync <run>/wandb/offline-run-*`, or `wandb login` before training).",
                save_dir,
            )
    folder = Path(save_dir)
    folder.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("id", wandb_run_id(folder))
    kwargs.setdefault("resume", "allow")
    # W&B reads what it prints from its process-wide settings (wandb.setup), not a run's.
    wandb.setup(wandb.Settings(show_info=not quiet))
    kwargs.setdefault("settings", wandb.Settings(init_timeout=init_timeout, show_info=not quiet))
    return FallbackWandbLogger(save_dir=save_dir, mode=mode, **kwargs)


@contextlib.contextmanager
def wandb_finished() -> Iterator[None]:
    """End this process's W&B run after the block (failed if it raised), so that the next run
    in the same process (a Hydra sweep) starts its own."""
    import wandb

    try:
        yield
    except BaseException:
        if wandb.run is not None:
            wandb.finish(exit_code=1)
        raise
    if wandb.run is not None:
        wandb.finish()


class _AppendingWriter(ExperimentWriter):
    """Appends to metrics.csv under the header found in the file at each save.

    The file may have been written by someone else since this writer last looked: the part
    of a run before a resume, or the training processes of ``ddp_spawn``.
    """

    def _check_log_dir_exists(self) -> None:
        pass  # Lightning's writer deletes metrics.csv here

    def _header(self) -> list[str]:
        if not self._fs.isfile(self.metrics_file_path):
            return []
        with self._fs.open(self.metrics_file_path, "r", newline="") as file:
            return next(csv.reader(file), [])

    def save(self) -> None:
        if not self.metrics:
            return
        header = self._header()
        keys = sorted(set(header).union(*self.metrics))
        if header and keys != header:
            self._rewrite_with_new_header(keys)
        self.metrics_keys = keys
        with self._fs.open(self.metrics_file_path, "a" if header else "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=keys)
            if not header:
                writer.writeheader()
            writer.writerows(self.metrics)
        self.metrics = []


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger, appending to an existing ``metrics.csv`` instead of deleting it.

    Steps that ran twice (after a hard kill and a resume from an older checkpoint) appear
    twice; ``lightseg.tools.plot`` keeps the later row.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

"""Experiment loggers, configured before Lightning's own classes are built: W&B's mode is decided
first (an unreachable server means offline logging after seconds, not a failed start after a
minute), and its run id kept in the run folder, so that a resume continues the same W&B run."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import secrets
import shutil
import string
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightseg.errors import written_whole

log = logging.getLogger(__name__)

#: Where W&B logs to unless WANDB_BASE_URL (a W&B server of one's own) says otherwise.
WANDB_HOST = "https://api.wandb.ai"
#: Noise W&B prints because Lightning passes ``anonymous`` even when unset (wandb/wandb#10909);
#: printed once per process, so :func:`wandb_logger` prints it once where no one sees it.
ANONYMOUS_WARNING = "The anonymous setting has no effect and will be removed in a future version."


def wandb_credentials_present(host: str) -> bool:
    """An API key in the environment, or an entry for ``host`` in ~/.netrc (``wandb login``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    name = urlparse(host).hostname or ""
    return netrc.is_file() and name in netrc.read_text(errors="ignore")


def answers(url: str, timeout: float) -> bool:
    """Whether an HTTP server answers at ``url`` (any status) within ``timeout`` seconds; in a
    thread, so that a name lookup that hangs is bounded too (proxies used, as W&B uses them)."""
    answered: list[bool] = []

    def probe() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            urllib.request.urlopen(request, timeout=timeout).close()
        except urllib.error.HTTPError:  # an error status is still an answer
            pass
        except (OSError, ValueError):  # refused, unknown host, timed out, no network
            return
        answered.append(True)

    thread = threading.Thread(target=probe, name="wandb-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


def wandb_mode(requested: str = "auto", save_dir: str = ".", probe_timeout: float = 5.0) -> str:
    """The mode W&B runs in here, decided before it starts: ``WANDB_MODE`` or ``requested``,
    where ``auto`` and ``online`` mean online if there are credentials and the server answers,
    else offline (said in one line, never a prompt)."""
    mode = os.environ.get("WANDB_MODE") or requested
    if mode not in ("auto", "online"):
        return mode  # offline, disabled: as asked
    host = os.environ.get("WANDB_BASE_URL", WANDB_HOST).rstrip("/")
    if not wandb_credentials_present(host):
        why = "no credentials found (`wandb login` before training, or WANDB_API_KEY)"
        say = log.info
    elif not answers(host, probe_timeout):
        say, why = log.warning, f"{host} does not answer (waited {probe_timeout:g} s)"
    else:
        return "online"
    message = (
        "W&B: %s; logging offline to %s (upload later with `wandb sync %s/wandb/offline-run-*`)."
    )
    say(message, why, save_dir, save_dir)
    return "offline"


def wandb_run_id(id_file: str | Path) -> str:
    """The run folder's W&B id: the one stored in ``id_file``, else the sweep agent's
    (WANDB_RUN_ID), else a new one; stored by the first process."""
    path = Path(id_file)
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    alphabet = string.ascii_lowercase + string.digits  # what W&B's own ids use
    run_id = os.environ.get("WANDB_RUN_ID") or "".join(secrets.choice(alphabet) for _ in range(8))
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    return run_id


def wandb_logger(
    mode: str = "auto",
    save_dir: str = ".",
    id_file: str | None = None,
    probe_timeout: float = 5.0,
    init_timeout: float = 60,
    quiet: bool = True,
    **kwargs,
) -> WandbLogger:
    """Lightning's WandbLogger in the mode :func:`wandb_mode` decides; ``id_file`` keeps the
    run's W&B id (none: a new W&B run at each start), ``quiet`` turns off W&B's informational
    messages (warnings stay), other keys go to WandbLogger (``project``, ``tags``, ...)."""
    import wandb

    mode = wandb_mode(mode, save_dir, probe_timeout)
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if id_file:
        kwargs.setdefault("id", wandb_run_id(id_file))
    # W&B reads what it prints from its process-wide settings (wandb.setup), not a run's.
    wandb.setup(wandb.Settings(show_info=not quiet))
    kwargs.setdefault("settings", wandb.Settings(init_timeout=init_timeout, show_info=not quiet))
    with contextlib.redirect_stderr(io.StringIO()):
        wandb.termwarn(ANONYMOUS_WARNING, repeat=False)  # shown: not again
    return WandbLogger(save_dir=save_dir, mode=mode, **kwargs)  # resume="allow": Lightning's


def upload_files(run, folder: Path, patterns: Iterable[str]) -> None:
    """Upload the files of ``folder`` matching ``patterns`` (globs) now, as copies in the W&B
    run's own folder (else W&B symlinks each file and warns that it did)."""
    files = Path(run.dir)
    for pattern in patterns:
        found = sorted(Path(folder).glob(pattern))
        for path in found:
            copy = files / path.relative_to(folder)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, copy)
        if found:
            run.save(str(files / pattern), base_path=str(files), policy="now")


@contextlib.contextmanager
def wandb_finished(folder: str | Path, patterns: Iterable[str]) -> Iterator[None]:
    """Upload the files of ``folder`` matching ``patterns`` after the block, then end this
    process's W&B run (failed if it raised): the next run in this process starts its own."""
    import wandb

    exit_code = 1
    try:
        yield
        exit_code = 0
    finally:
        if wandb.run is not None:
            upload_files(wandb.run, Path(folder), patterns)
            wandb.finish(exit_code=exit_code)


def numbers(tree: Mapping, prefix: str) -> dict[str, float]:
    """The numbers of a nested dict as ``{"<prefix>/<key>/<key>": value}`` (not lists, text)."""
    out: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(numbers(value, f"{prefix}/{key}"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = value
    return out


def add_to_wandb_run(
    id_file: Path, settings: Mapping, values: Mapping[str, float], images: Iterable[Path] = ()
) -> None:
    """Add ``values`` and ``images`` to the W&B run whose id ``id_file`` keeps (``settings``: its
    ``logger.wandb`` config), so that eval's results land next to the training curves."""
    import wandb

    folder = Path(id_file).parent
    timeout = settings.get("probe_timeout", 5)
    mode = wandb_mode(str(settings.get("mode", "auto")), str(folder), timeout)
    run = wandb.init(
        id=wandb_run_id(id_file),
        project=settings.get("project"),
        entity=settings.get("entity"),
        dir=str(folder),
        mode=mode,
        resume="allow",
        settings=wandb.Settings(show_info=False, init_timeout=settings.get("init_timeout", 60)),
    )
    try:
        run.summary.update(dict(values))
        run.log({path.stem: wandb.Image(str(path)) for path in images if path.is_file()})
    finally:
        run.finish()


def drop_replayed_rows(logger: CSVLogger, step: int) -> None:
    """Remove the rows from ``step`` on from the earlier parts of ``logger``'s log: a run resumed
    from a checkpoint at ``step`` logs them again."""
    for path in Path(logger.root_dir).glob("version_*/metrics.csv"):
        if path.parent == Path(logger.log_dir):
            continue
        with path.open(newline="") as file:
            rows = list(csv.reader(file))
        if not rows or "step" not in rows[0]:
            continue
        at = rows[0].index("step")
        kept = [rows[0], *(row for row in rows[1:] if not row[at] or float(row[at]) < step)]
        if len(kept) < len(rows):
            with written_whole(path) as temp, temp.open("w", newline="") as file:
                csv.writer(file, lineterminator="\n").writerows(kept)

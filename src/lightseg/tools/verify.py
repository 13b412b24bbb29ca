"""Re-check a bundle's numbers from the bundle alone (``make bundle`` wrote it).

    make verify BUNDLE=run.tar.gz [DATA=<data folder>] [ARGS="tolerance=1e-3"]

Rebuilds the network from ``model.json`` and ``model.safetensors``, reads the recorded test
images from the data here (``data_dir`` replaces the run's ``paths.data_dir``), checks they hold
the pixels of ``data.json``, and scores them on the CPU as the run's test stage did, so that each
``test/*`` number of ``metrics.json`` is recomputed. Exit 0 when each agrees within
``tolerance`` (relative or absolute); otherwise one paragraph per metric that moved.
"""

from __future__ import annotations

import json
import math
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import safetensors.torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from lightseg.callbacks.per_image import PerImageResults
from lightseg.checkpoints import build_module, file_digest
from lightseg.config import app
from lightseg.errors import LightsegError
from lightseg.runs.folder import SPLITS
from lightseg.tools.bundle import pixel_digests, prepared
from lightseg.utils.console import console, quiet_third_party


def unpack(archive: Path, folder: Path) -> dict[str, Any]:
    """Extract ``archive`` into ``folder``; returns its ``bundle.json``."""
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(folder, filter="data")  # no paths outside folder, no devices
        return json.loads((folder / "bundle.json").read_text())
    except (OSError, tarfile.TarError, ValueError) as error:
        raise LightsegError(
            f"BUNDLE='{archive}' is not a bundle that make bundle wrote ({type(error).__name__}: "
            f"{error}). Give the archive of `make bundle RUN=<run folder>` (<run>/bundle.tar.gz)."
        ) from None


def moved_to(data: dict, recorded: str | None, given: str | None) -> dict:
    """``data`` with every path under the run's data folder ``recorded`` moved under ``given``."""
    if not (recorded and given):
        return data
    prefix = recorded.rstrip("/")

    def move(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: move(item) for key, item in value.items()}
        if isinstance(value, list):
            return [move(item) for item in value]
        if isinstance(value, str) and (value == prefix or value.startswith(prefix + "/")):
            return str(given).rstrip("/") + value[len(prefix) :]
        return value

    return move(data)


def check_data(source, recorded: dict[str, str | None], data_dir: str) -> None:
    """The data-differs paragraph: the dataset, or test images, missing here, or other pixels."""
    try:
        found = pixel_digests(source, list(recorded))
    except LightsegError as error:  # its fix names paths.data_dir, which verify does not read
        raise LightsegError(
            f"The run's data is not on this machine: {type(source).__name__} cannot be read "
            f"under '{source.root}' ({str(error).split('. ')[0]}). Point DATA= (data_dir=, now "
            f"'{data_dir}') at a copy of the data folder the run used."
        ) from None
    missing = [i for i, digest in found.items() if digest is None]
    changed = [i for i, digest in found.items() if digest and digest != recorded[i]]
    if missing or changed:
        what = [f"{len(missing)} missing ({', '.join(missing[:10])})"] if missing else []
        what += [f"{len(changed)} with other pixels ({', '.join(changed[:10])})"] if changed else []
        raise LightsegError(
            f"The data on this machine differs from the run's: of the {len(recorded)} recorded "
            f"test images under '{source.root}', {' and '.join(what)} (the bundle's data.json "
            "fingerprint). Its numbers cannot be re-checked on other images: point "
            f"DATA= (data_dir=, now '{data_dir}') at a copy of the data the run used."
        )


def verify(archive: str | Path, data_dir: str | None = None, tolerance: float = 1e-4) -> dict:
    """Re-score the bundle's test split; returns ``{metric: (stored, recomputed)}``, or raises
    one paragraph per metric that differs by more than ``tolerance``."""
    archive = Path(archive)
    with tempfile.TemporaryDirectory(prefix="lightseg-verify-") as temp:
        folder = Path(temp)
        manifest = unpack(archive, folder)
        altered = file_digest(folder / "model.safetensors") != manifest.get("weights_sha256")
        model = json.loads((folder / "model.json").read_text())
        weights = safetensors.torch.load_file(folder / "model.safetensors")
        module = build_module(model["module"], model["hyper_parameters"], weights, archive)
        config = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"), resolve=True)
        fingerprint = json.loads((folder / "data.json").read_text())
        data = moved_to(config["data"], fingerprint.get("data_dir"), data_dir)
        data = {**data, "split_dir": None, "cache": {**data.get("cache", {}), "dir": None}}
        datamodule = instantiate(data, _convert_="all")
        source = prepared(datamodule.source)
        check_data(source, fingerprint["pixels_sha256"], data_dir or fingerprint.get("data_dir"))
        by_id = {sample.id: sample for sample in source.find()}
        test = [by_id[i] for i in (folder / SPLITS / "test.txt").read_text().split()]
        datamodule.splits = {"train": test, "val": test, "test": test}  # only test is read
        stored = json.loads((folder / "metrics.json").read_text())
        quiet_third_party()
        limit = (config.get("trainer") or {}).get("limit_test_batches")
        trainer = L.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            callbacks=[PerImageResults(folder / "rescored", config.get("failure"))],
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_test_batches=1.0 if limit is None else limit,  # as many batches as the run
        )
        (results,) = trainer.test(module, datamodule=datamodule, verbose=False)
    compared = {
        key: (value, float(results[key]) if key in results else None)
        for key, value in stored.items()
        if key.startswith("test/") and (value is None or isinstance(value, int | float))
    }
    show(compared, archive, tolerance)
    moved = [
        paragraph(key, *pair, tolerance, altered)
        for key, pair in compared.items()
        if not agrees(*pair, tolerance)
    ]
    if moved:
        raise LightsegError("\n\n".join(moved))
    return compared


def agrees(stored: float | None, recomputed: float | None, tolerance: float) -> bool:
    """Within ``tolerance``; metrics.json writes NaN (no value) as null."""
    if recomputed is None or stored is None:
        return stored is None and recomputed is not None and math.isnan(recomputed)
    return math.isclose(stored, recomputed, rel_tol=tolerance, abs_tol=tolerance)


def paragraph(key: str, stored: Any, recomputed: Any, tolerance: float, altered: bool) -> str:
    if recomputed is None:
        return f"{key}: metrics.json holds {stored}, but the test stage did not compute it here."
    why = (
        "model.safetensors was changed after make bundle wrote it (its SHA-256 differs from "
        "bundle.json's)"
        if altered
        else "the code or the packages here differ from the run's (compare the bundle's "
        "run_info.json commit, git_diff.patch and packages.txt with this checkout)"
    )
    return (
        f"{key} does not reproduce: metrics.json holds {stored}, the bundle's weights give "
        f"{recomputed:.6g} on the recorded test images (tolerance {tolerance:g}): {why}."
    )


def show(compared: dict, archive: Path, tolerance: float) -> None:
    table = Table("metric", "stored", "recomputed", "agrees", title=f"verify {archive.name}")
    for key, pair in compared.items():
        cells = [f"{v:.6g}" if v is not None else "-" for v in pair]
        table.add_row(key, *cells, "yes" if agrees(*pair, tolerance) else "NO")
    console.print(table)


@app("verify")
def main(cfg: DictConfig) -> None:
    compared = verify(cfg.bundle, cfg.get("data_dir"), float(cfg.tolerance))
    console.print(f"All {len(compared)} test metrics of {cfg.bundle} reproduce.", soft_wrap=True)


if __name__ == "__main__":
    main()

"""Pack a finished run into one archive that re-checks its own numbers (``make verify``).

    make bundle RUN=logs/demo/runs/<time> [OUTPUT=run.tar.gz]

The archive (tar.gz) holds the run's record (config, Hydra's record, splits, run_info.json,
git diff, untracked files, packages), its results (metrics.json, per_image.csv, make publish's
model card ``publish/README.md``) and what ``make verify`` needs beyond them:
``model.safetensors`` (best.ckpt's weights, no pickle) with ``model.json`` (module class and
hyperparameters), and ``data.json``, a SHA-256 of each test image's decoded pixels and mask, so
that verify tells changed data apart from a model that does not reproduce.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import time
from pathlib import Path

import numpy as np
import safetensors.torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lightseg.checkpoints import file_digest, read_checkpoint
from lightseg.config import app
from lightseg.data.module import prepare_source
from lightseg.data.source import SegmentationSource, cache_home, read_pair
from lightseg.errors import LightsegError, room_to_write, written_whole
from lightseg.runs import RunFolder
from lightseg.runs.folder import CONFIG, HYDRA, PER_IMAGE, RUN_INFO, SPLITS
from lightseg.runs.snapshot import GIT_DIFF, PACKAGES, UNTRACKED, requirements
from lightseg.utils.console import console

FORMAT = 1
#: The run's own files, copied as they are (those it lacks are left out).
RUN_FILES = (CONFIG, RUN_INFO, "metrics.json", PER_IMAGE, GIT_DIFF, UNTRACKED, PACKAGES)
MODEL_CARD = "publish/README.md"  # make publish's, in its default folder


def pixel_digests(source: SegmentationSource, ids: list[str]) -> dict[str, str | None]:
    """SHA-256 of each sample's decoded image and mask (None: ``source`` has no such id): the
    data's content, whatever the file names, paths or times of this machine."""
    samples = {sample.id: sample for sample in source.find()}
    digests = dict.fromkeys(ids)
    for sample_id in set(ids) & samples.keys():
        digest = hashlib.sha256()
        for array in map(np.ascontiguousarray, read_pair(source, samples[sample_id])):
            digest.update(f"{array.dtype}{array.shape}".encode() + array.tobytes())
        digests[sample_id] = digest.hexdigest()
    return digests


def prepared(source: SegmentationSource) -> SegmentationSource:
    """``source`` prepared as training prepares it (the demo writes itself where it is missing)."""
    prepare_source(source, cache_home())
    return source


def check_run(run: RunFolder) -> None:
    """One paragraph for a folder that is not a finished run, naming what is missing."""
    fix = "point RUN= at a finished run folder that make train wrote (logs/<name>/runs/<time>)"
    if not run.path.is_dir():
        raise LightsegError(f"RUN='{run}' is not a folder: {fix}.")
    for path, what in (
        (run.config, "its resolved config"),
        (run.metrics, "the final metrics: an unfinished run; finish it with ckpt_path=last"),
        (run.best, "the best checkpoint"),
        (run.path / SPLITS / "test.txt", "the test split list"),
    ):
        if not path.is_file():
            raise LightsegError(f"RUN='{run}' has no {path.name} ({what}): {fix}.")


def bundle(run: RunFolder, output: Path | None = None) -> Path:
    """Write the archive of ``run`` (default ``<run>/bundle.tar.gz``); returns its path."""
    check_run(run)
    output = Path(output) if output else run.path / "bundle.tar.gz"
    checkpoint = read_checkpoint(run.best)
    state = checkpoint["state_dict"]  # cloned: safetensors refuses tensors that share memory
    weights = safetensors.torch.save({k: v.detach().clone().contiguous() for k, v in state.items()})
    model = {
        "module": checkpoint.get("module", "lightseg.models.SegmentationModule"),
        "hyper_parameters": checkpoint["hyper_parameters"],
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
    }
    config = OmegaConf.to_container(OmegaConf.load(run.config), resolve=True)
    test_ids = (run.path / SPLITS / "test.txt").read_text().split()
    data = {
        "data_dir": (config.get("paths") or {}).get("data_dir"),
        "split": "test",
        "pixels_sha256": pixel_digests(
            prepared(instantiate(config["data"]["source"], _convert_="all")), test_ids
        ),
    }
    made = {
        "model.safetensors": weights,
        "model.json": json.dumps(model, indent=2, default=str).encode(),
        "data.json": json.dumps(data, indent=2).encode(),
    }
    if not (run.path / PACKAGES).is_file():  # older runs: this environment's, said so
        made[PACKAGES] = f"# written by make bundle, not by the run\n{requirements()}".encode()
    copied = [run.path / name for name in (*RUN_FILES, MODEL_CARD) if (run.path / name).is_file()]
    copied += sorted((run.path / SPLITS).glob("*.txt")) + sorted((run.path / HYDRA).glob("*.yaml"))
    manifest = {
        "format": FORMAT,
        "run": str(run.path.resolve()),
        "checkpoint_sha256": file_digest(run.best),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "files": sorted([str(p.relative_to(run.path)) for p in copied] + list(made)),
    }
    made["bundle.json"] = json.dumps(manifest, indent=2).encode()
    output.parent.mkdir(parents=True, exist_ok=True)
    with (
        room_to_write(output.parent, output.name),
        written_whole(output) as temp,
        tarfile.open(temp, "w:gz") as archive,
    ):
        for path in copied:
            archive.add(path, arcname=str(path.relative_to(run.path)), recursive=False)
        for name, content in made.items():
            member = tarfile.TarInfo(name)
            member.size, member.mtime = len(content), int(time.time())
            archive.addfile(member, io.BytesIO(content))
    console.print(f"Bundle of {run} written to {output}", soft_wrap=True)
    return output


@app("bundle")
def main(cfg: DictConfig) -> None:
    bundle(RunFolder(cfg.run), cfg.get("output"))


if __name__ == "__main__":
    main()

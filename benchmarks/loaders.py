"""Data-loader throughput at one training size: per worker, by workers, with and without cache.

Each dataset's own train loader (its augmentations, sampler and uint8 batches, as training
gets them) is timed after its first batch (starting workers is not throughput) until
``samples`` images have come out, across epochs; the median of three such timings counts.
"per worker" is the rate of one worker process with a core to itself; the table says how many
such workers a GPU that trains at ``gpu_rate`` images/s needs.

``ph2_sized`` is synthetic data in PH2's layout and at PH2's size (24-bit BMPs of about
765x570, the demo's lesions scaled up), written once under the bench folder: it stands in for
PH2 where PH2 is not available. Datasets that are not on disk are skipped.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from PIL import Image

from lightseg.config import compose_config
from lightseg.data import SegmentationDataModule
from lightseg.data.demo import write_demo
from lightseg.data.ph2 import IMAGES_FOLDER
from lightseg.errors import LightsegError
from lightseg.utils.console import console

#: PH2's images are 763-767 x 553-576 pixels (width x height).
PH2_WIDTHS, PH2_HEIGHTS = (763, 768), (553, 577)
PH2_SIZED = "ph2_sized"


def write_ph2_sized(root: Path, cases: int) -> Path:
    """The demo's cases in PH2's layout, rescaled to PH2's image sizes (once; then reused)."""
    marker = root / ".lightseg-bench"
    stamp = f"{cases} {PH2_WIDTHS} {PH2_HEIGHTS}"
    if marker.is_file() and marker.read_text() == stamp:
        return root
    console.print(f"  writing {cases} PH2-sized synthetic cases to {root}")
    write_demo(root, cases, seed=0)
    for path in sorted((root / IMAGES_FOLDER).rglob("*.bmp")):
        index = int(path.relative_to(root / IMAGES_FOLDER).parts[0][3:])  # IMDnnn: one size
        image = Image.open(path)
        size = (PH2_WIDTHS[0] + index % 5, PH2_HEIGHTS[0] + (7 * index) % 24)
        # masks stay 1-bit (nearest), images 24-bit RGB (bicubic), as in the PH2 archive
        resample = Image.NEAREST if image.mode == "1" else Image.BICUBIC
        image.resize(size, resample).save(path)
    marker.write_text(stamp)
    return root


def data_config(name: str, size: int, data_dir: str, output: Path):
    """The data config of ``name`` at ``size`` px; ``ph2_sized`` is PH2's config on the fixture."""
    overrides = [f"paths.data_dir={data_dir}", f"paths.output_dir={output}"]
    if name == PH2_SIZED:
        root = write_ph2_sized(output.parent / "fixtures" / PH2_SIZED / "PH2Dataset", 120)
        overrides += ["data=ph2", f"data.source.root={root}", f"data.cache.dir={root.parent}/cache"]
    else:
        overrides.append(f"data={name}")
    overrides += [f"data.image_size={size}", "data.split_dir=null"]
    return compose_config(overrides).data


def located(data_cfg, **changes) -> SegmentationDataModule | None:
    """The DataModule of ``data_cfg`` with its samples found, or None where its data is absent."""
    datamodule = instantiate(data_cfg, _convert_="all", **changes)
    try:
        datamodule.locate()
    except LightsegError:
        return None
    return datamodule


def rate(datamodule: SegmentationDataModule, workers: int, samples: int) -> float:
    """Images/s of the train loader with ``workers`` processes, after its first batch."""
    datamodule.num_workers = workers
    loader = datamodule.train_dataloader()
    batches = iter(loader)
    next(batches)
    count, start = 0, time.perf_counter()
    while count < samples:
        for batch in batches:
            count += len(batch["id"])
            if count >= samples:
                break
        else:
            batches = iter(loader)  # the next epoch; persistent workers stay up
    elapsed = time.perf_counter() - start
    del batches, loader  # stops the workers
    return count / elapsed


def loader_rows(args, data_dir: str) -> list[dict[str, Any]]:
    """One row per dataset and cache setting: images/s by workers, per worker, workers needed."""
    rows = []
    workers = sorted({*args.workers})
    for name in args.datasets:
        data_cfg = data_config(name, args.loader_size, data_dir, args.output)
        probe = located(data_cfg, cache={"enabled": False})
        if probe is None:
            console.print(f"  {name}: dataset not present, skipped")
            continue
        for cache in (False, True):  # without a cache, the probe is that datamodule
            datamodule = (
                instantiate(data_cfg, _convert_="all", cache={"enabled": True}) if cache else probe
            )
            start = time.perf_counter()
            datamodule.prepare_data()
            row: dict[str, Any] = {
                "dataset": name,
                "size": f"{args.loader_size}px",
                "cache": "yes" if cache else "no",
                "cache ready s": time.perf_counter() - start if cache else None,
            }
            for count in workers:  # the median of three timings: single ones vary on busy hosts
                rates = [rate(datamodule, count, args.loader_samples) for _ in range(3)]
                row[f"workers={count}"] = statistics.median(rates)
            per_worker = row.get("workers=1")
            row["per worker"] = per_worker
            if per_worker:
                row[f"workers for {args.gpu_rate:g}/s"] = math.ceil(args.gpu_rate / per_worker)
            console.print(
                f"  {name} cache={row['cache']}: "
                + ", ".join(f"{k} {v:.0f}/s" for k, v in row.items() if k.startswith("workers="))
            )
            rows.append(row)
    return rows

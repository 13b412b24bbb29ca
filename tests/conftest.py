"""Shared fixtures: composing the real configs, and tiny datasets in their real on-disk formats."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import openpyxl
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from lightseg import CONFIG_DIR
from tests.fixtures_datasets import OFFICIAL_FIXTURES

# pytest-xdist's workers set COLUMNS=80 / LINES=24; the CLIs the tests start would then print
# 80-column tables (lightseg.utils.console keeps a set COLUMNS), unlike a serial run.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)


@pytest.fixture(autouse=True)
def root_logger_restored():
    """A Hydra app run by a test points the root logger at that test's captured stdout; a later
    test that logs outside an app would write to the closed capture ("--- Logging error ---")."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def make_config(tmp_path: Path, *overrides: str, data_dir: Path | None = None) -> DictConfig:
    """The real train config, with outputs (and optionally data) in temporary folders."""
    paths = [f"paths.output_dir={tmp_path / 'run'}", "print_config=false"]
    if data_dir is not None:
        paths.append(f"paths.data_dir={data_dir}")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=[*paths, *overrides])


def group_option(group: str, option: str) -> dict:
    """A config group option's file as plain data (configs/<group>/<option>.yaml)."""
    return yaml.safe_load((Path(CONFIG_DIR) / group / f"{option}.yaml").read_text())


BINARY_METRICS = group_option("metrics", "binary")
MULTICLASS_METRICS = group_option("metrics", "multiclass")


def metrics_for(classes) -> dict:
    """The metrics group option a task of these classes reports (binary ones need 2 classes)."""
    return BINARY_METRICS if len(classes) == 2 else MULTICLASS_METRICS


CE_DICE = {**group_option("loss", "ce"), **group_option("loss", "dice")}


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory) -> Path:
    """lightseg's cache folder (paths.cache_dir) for the whole session, subprocesses included:
    tests never write into the user's ~/.cache/lightseg."""
    folder = tmp_path_factory.mktemp("lightseg_cache")
    os.environ["LIGHTSEG_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture(scope="session", autouse=True)
def subprocess_temp_dir(tmp_path_factory) -> None:
    """Subprocesses' temporary files (W&B makes two folders at import) under pytest's folder: a
    process the tests kill cannot clean its own, and would leave them in /tmp."""
    os.environ["TMPDIR"] = str(tmp_path_factory.mktemp("tmp"))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for tests that train: on small shared machines more only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: One short epoch that still writes checkpoints (fast_dev_run writes none).
ONE_STEP = (
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.accelerator=cpu",
    "logger=none",
    "data.num_workers=0",
    "data.batch_size=2",
    "model.encoder_weights=null",
)

#: Fast settings for running a whole config on the CPU.
#: Every shipped experiment (configs/experiment/*.yaml), for tests that run each one.
EXPERIMENTS = sorted(p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml"))

FAST = (
    "trainer.fast_dev_run=true",
    "trainer.accelerator=cpu",
    "logger=none",
    "data.num_workers=0",
    "data.batch_size=2",
    "model.encoder_weights=null",
)


# --- PH2 in its official layout -------------------------------------------------------------

PH2_CASES = {  # id: (width, height, diagnosis) -- odd sizes, like the real 763-767 x 553-576
    "IMD002": (67, 45, "Common Nevus"),
    "IMD003": (65, 47, "Common Nevus"),
    "IMD009": (66, 44, "Atypical Nevus"),
    "IMD016": (63, 46, "Atypical Nevus"),
    "IMD058": (67, 43, "Melanoma"),
    "IMD061": (64, 45, "Melanoma"),
}


def ph2_arrays(case: str) -> tuple[np.ndarray, np.ndarray]:
    """The exact image and mask a fixture case holds: a bright rectangle is the lesion."""
    width, height, _ = PH2_CASES[case]
    rng = np.random.default_rng(int(case[3:]))
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = np.zeros((height, width), bool)
    mask[5 : height // 2, 7 : width - 9] = True
    return image, mask


def write_ph2(root: Path, cases=PH2_CASES) -> Path:
    """PH2Dataset/ as the archive unpacks: 24-bit BMPs, 1-bit BMP masks, an _roi folder, xlsx."""
    images = root / "PH2 Dataset images"
    for case in cases:
        image, mask = ph2_arrays(case)
        folder = images / case
        (folder / f"{case}_Dermoscopic_Image").mkdir(parents=True)
        (folder / f"{case}_lesion").mkdir()
        (folder / f"{case}_roi").mkdir()
        Image.fromarray(image).save(folder / f"{case}_Dermoscopic_Image" / f"{case}.bmp")
        Image.fromarray(mask).convert("1").save(folder / f"{case}_lesion" / f"{case}_lesion.bmp")
        Image.fromarray(~mask).convert("1").save(folder / f"{case}_roi" / f"{case}_R1_Roi.bmp")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.append(["Legend:", "Clinical Diagnosis: Common Nevus, Atypical Nevus, Melanoma"])
    for _ in range(10):
        sheet.append([])
    sheet.append(
        ["Image Name", "Histological Diagnosis", "Clinical Diagnosis", None, None, "Asymmetry"]
    )
    sheet.append([None, None, "Commom Nevus", "Atypical Nevus", "Melanoma", None])  # sic
    names = ("Common Nevus", "Atypical Nevus", "Melanoma")
    for case, (_, _, diagnosis) in cases.items():
        sheet.append([case, None, *("X" if n == diagnosis else None for n in names), 0])
    book.save(root / "PH2_dataset.xlsx")
    return root


@pytest.fixture
def ph2_root(tmp_path: Path) -> Path:
    """A fresh PH2 fixture per test (tests may damage it)."""
    return write_ph2(tmp_path / "data" / "PH2Dataset")


#: Folder under the data dir -> writer of a small fixture in that dataset's official layout.
DATASET_FIXTURES = {"PH2Dataset": write_ph2, **OFFICIAL_FIXTURES}


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data folder holding every dataset's fixture (the demo writes its own on first use).

    Shared by the tests that only read it; tests that damage data build their own copy.
    """
    root = tmp_path_factory.mktemp("data")
    for folder, write in DATASET_FIXTURES.items():
        write(root / folder)
    return root


# --- A trained checkpoint, for the after-training tools --------------------------------------


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """A finished two-epoch demo run at 64x64: ``<run>/config.yaml``, ``checkpoints/best.ckpt``."""
    from lightseg.train import train

    root = tmp_path_factory.mktemp("demo_run")
    cfg = make_config(
        root,
        "experiment=demo",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=2",
        "logger=none",
        "callbacks.progress_bar=null",
        "callbacks.model_summary=null",
        "data.num_workers=0",
        "data.image_size=[64,64]",
        "data.source.num_cases=16",
        data_dir=root / "data",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(cfg)
    finally:
        torch.set_num_threads(threads)
    return root / "run"


@pytest.fixture(scope="session")
def demo_checkpoint(demo_run: Path) -> Path:
    return demo_run / "checkpoints" / "best.ckpt"

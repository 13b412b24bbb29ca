"""The notebooks run top to bottom, show what they promise, write nothing into the repository,
and are committed without outputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import lightseg
from tests.conftest import DATASET_FIXTURES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
KERNEL = "lightseg-tests"


def repo_changes() -> set[str] | None:
    """``git status`` of the repository, ignored paths included (None outside a git checkout)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    status = subprocess.run(
        ["git", "status", "--porcelain", "--ignored=matching"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {line for line in status.splitlines() if "__pycache__" not in line}


def run_notebook(name: str, tmp_path: Path, monkeypatch, **env: Path):
    """Execute ``notebooks/<name>`` in a kernel of this interpreter that imports this checkout,
    started in an empty folder with ``env`` set; returns the executed notebook."""
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    kernelspec = pytest.importorskip("ipykernel.kernelspec")
    jupyter = tmp_path / "jupyter"
    kernelspec.write_kernel_spec(jupyter / "kernels" / KERNEL)  # runs sys.executable
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(jupyter / "runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no user profile or startup files
    src = str(Path(lightseg.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [src, os.getenv("PYTHONPATH")])))
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as `one_thread`: shared CI cores only contend
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    before = repo_changes()
    nbclient.NotebookClient(
        notebook, timeout=300, kernel_name=KERNEL, resources={"metadata": {"path": str(cwd)}}
    ).execute()
    assert repo_changes() == before, "the notebook wrote into the repository"
    assert not any(cwd.iterdir()), "the notebook wrote into its working directory"
    return notebook


def outputs(notebook) -> tuple[str, int]:
    """All text the cells printed or displayed, and the number of images they displayed."""
    texts, images = [], 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            texts.append(output.get("text", ""))
            data = output.get("data", {})
            texts += [data.get("text/plain", ""), data.get("text/html", "")]
            images += "image/png" in data
    return "\n".join(texts), images


def test_explore_notebook_shows_the_datasets_present_and_lists_the_missing(tmp_path, monkeypatch):
    data = tmp_path / "data"
    for folder, write in DATASET_FIXTURES.items():  # official layouts; MADS stays missing
        if folder != "mads":
            write(data / folder)

    notebook = run_notebook("01_explore_data.ipynb", tmp_path, monkeypatch, LIGHTSEG_DATA_DIR=data)

    text, images = outputs(notebook)
    assert (data / "demo" / "80-cases-seed0" / "PH2Dataset" / ".lightseg-demo").is_file()
    # every configs/data/*.yaml: name -> (images, classes); voc_aug adds SBD's train_aug ids
    found = {
        "coco": (2, 21),
        "coco_voc": (2, 21),
        "demo": (80, 2),
        "demo_hard": (80, 2),
        "folder": (10, 2),
        "ph2": (6, 2),
        "voc": (5, 21),
        "voc_aug": (8, 21),
    }
    for name, (count, classes) in found.items():
        row = rf"<th>{name}</th>\s*<td>[^<]+</td>\s*<td>{count}</td>\s*<td>{classes}</td>"
        assert re.search(row + r"\s*<td>found</td>", text), name
        assert f"{name}: width " in text  # image size summary
    missing = r"<th>mads</th>\s*<td>[^<]+</td>(\s*<td>&lt;NA&gt;</td>){2}\s*<td>not found</td>"
    assert re.search(missing, text)
    assert "pixel share" in text and "images with class" in text
    assert "aeroplane" in text and "lesion" in text and "foreground" in text  # class tables
    assert images == len(found) * 2 + 1  # samples and class charts per dataset, size histogram


def test_results_notebook_predicts_evaluates_with_and_without_tta_and_applies_effects(
    tmp_path, monkeypatch, demo_run
):
    run = tmp_path / "run"  # a copy: evaluation writes into the run folder
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(demo_run / "config.yaml", run)
    shutil.copy(demo_run / "checkpoints" / "best.ckpt", run / "checkpoints")
    checkpoint = run / "checkpoints" / "best.ckpt"

    notebook = run_notebook(
        "02_results.ipynb",
        tmp_path,
        monkeypatch,
        LIGHTSEG_DATA_DIR=tmp_path / "data",
        LIGHTSEG_CKPT=checkpoint,
    )

    text, images = outputs(notebook)
    assert f"Checkpoint: {checkpoint}" in text
    assert "Training a short demo run" not in text
    assert "plain" in text and "flip TTA" in text
    number = r"\s+(0\.\d+|1\.0+)"
    assert re.search(r"lesion" + 4 * number, text), "per-class table: IoU and Dice, both variants"
    assert re.search(r"\(foreground\)" + 4 * number, text)
    assert images == 3  # predictions, confusion matrix, effects
    (folder,) = (run / "eval").iterdir()
    report = json.loads((folder / "eval.json").read_text())
    assert set(report["metrics"]) == {"plain", "tta"}
    assert f"{report['metrics']['tta']['iou_lesion']:.4f}" in text


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_committed_notebooks_have_no_outputs(path):
    notebook = json.loads(path.read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, cell["source"][:80]
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"

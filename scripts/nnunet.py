"""Compare with nnU-Net v2 on exactly a lightseg run's split (nnU-Net itself is not needed here).

    .venv/bin/python scripts/nnunet.py export --run logs/ph2_unet/runs/<time> \\
        --out nnUNet_raw --dataset-id 501 [--name PH2]
    ... nnU-Net plans, trains on the run's train split (validating on its val split) and
        predicts its test split: the export prints the exact commands ...
    .venv/bin/python scripts/nnunet.py import --dataset nnUNet_raw/Dataset501_PH2 \\
        --pred nnunet_pred --out nnunet_masks
    make score PRED=nnunet_masks NAME=nnunet RUN=logs/ph2_unet/runs/<time>

``export`` writes nnU-Net v2's raw 2D format (documentation/dataset_format.md of MIC-DKFZ/nnUNet):
``Dataset<ID>_<Name>/imagesTr`` (train and val images), ``labelsTr`` (their masks),
``imagesTs`` (test images), ``dataset.json``, plus ``splits_final.json`` (one fold: the run's
train and val split, for ``nnUNet_preprocessed``) and ``lightseg_ids.json`` (case name ->
lightseg sample id, per split). Images are the pixels the run's data source reads (its own
conversions applied), written losslessly as PNG: 8-bit 3-channel images as one RGB file
(``<case>_0000.png``, channels R, G, B); any other 8- or 16-bit image as one grayscale PNG per
channel (``<case>_0000.png``, ``<case>_0001.png``, ...); float images are refused (PNG holds no
floats). Masks hold class indices; lightseg's ignore value 255 becomes nnU-Net's ignore label,
the class count (nnU-Net wants it named ``ignore`` and above every class). Case names are the
sample ids with characters other than letters, digits, ``-`` and ``_`` replaced by ``_`` (a
number appended if two ids meet).

``import`` copies nnU-Net's ``<case>.png`` predictions of one split to ``<lightseg id>.png``, the
names ``make score`` pairs with the run's images.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from rich.progress import track

from lightseg.data.source import SPLITS, read_pair
from lightseg.errors import LightsegError, user_errors
from lightseg.runs import RunFolder
from lightseg.task import IGNORE_INDEX
from lightseg.tools.score import run_samples
from lightseg.utils.console import console

IDS = "lightseg_ids.json"  # case name -> lightseg sample id, per split
SPLIT_FILE = "splits_final.json"  # nnU-Net's custom split, copied to nnUNet_preprocessed
ENDING = ".png"


def case_names(ids: Iterable[str]) -> dict[str, str]:
    """lightseg id -> nnU-Net case name: ids reduced to ``[A-Za-z0-9_-]`` (nnU-Net finds a
    case's files by name, and other characters break shells, paths or its ``_XXXX`` suffix),
    made unique by a number where two ids reduce to the same name."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for sample_id in dict.fromkeys(ids):
        base = re.sub(r"[^A-Za-z0-9_-]", "_", sample_id) or "case"
        name, number = base, 1
        while name in taken:
            name, number = f"{base}_{number}", number + 1
        names[sample_id] = name
        taken.add(name)
    return names


def label_names(classes: Sequence[str], ignore: bool) -> dict[str, int]:
    """dataset.json's ``labels``: nnU-Net names class 0 ``background`` and, with ``ignore``, wants
    an ``ignore`` label one above the highest class."""
    names = ["background", *classes[1:]]
    clashes = sorted({n for n in names[1:] if n in ("background", "ignore") or names.count(n) > 1})
    if clashes:
        raise LightsegError(
            f"The run's classes {list(classes)} cannot be nnU-Net label names: {clashes} is "
            "a duplicate or one of the names nnU-Net keeps for itself (background = 0, ignore). "
            "Rename the class in the data source (its classes) and export again."
        )
    labels = {name: index for index, name in enumerate(names)}
    return {**labels, "ignore": len(names)} if ignore else labels


def channel_images(image: np.ndarray, sample_id: str) -> tuple[list[Image.Image], list[str]]:
    """The PNG files of one image and the channel names they give: RGB in one file for 8-bit
    3-channel images, else one grayscale file per channel (8 or 16 bit)."""
    if image.ndim == 2:
        image = image[..., None]
    if image.dtype not in (np.uint8, np.uint16):
        raise LightsegError(
            f"Sample '{sample_id}' is a {image.dtype} image, but nnU-Net's 2D reader "
            "(NaturalImage2DIO) takes PNG files, which hold 8- or 16-bit integers only. Export "
            "the dataset's images as 8- or 16-bit files, or convert them for nnU-Net yourself "
            "(e.g. to .tif with nnU-Net's Tiff3DIO)."
        )
    if image.dtype == np.uint8 and image.shape[2] == 3:
        return [Image.fromarray(image, "RGB")], ["R", "G", "B"]
    channels = [Image.fromarray(np.ascontiguousarray(image[..., c])) for c in range(image.shape[2])]
    names = ["gray"] if len(channels) == 1 else [f"channel{c}" for c in range(len(channels))]
    return channels, names


def export(run: Path, out: Path, dataset_id: int, name: str | None = None) -> Path:
    """Write ``out/Dataset<ID>_<Name>`` from the run's splits; returns that folder."""
    if not 1 <= dataset_id <= 999:
        raise LightsegError(f"--dataset-id {dataset_id}: nnU-Net dataset ids are 1 to 999.")
    _, datamodule, splits = run_samples(RunFolder(run), *SPLITS)
    source, classes = datamodule.source, datamodule.classes
    label_names(classes, ignore=False)  # names nnU-Net refuses stop the export before it starts
    name = name or type(source).__name__
    if not re.fullmatch(r"[A-Za-z0-9_-]+", name):
        raise LightsegError(f"--name {name!r}: use letters, digits, - and _ only (e.g. PH2).")
    dataset = f"Dataset{dataset_id:03d}_{name}"
    taken = sorted(p.name for p in out.glob(f"Dataset{dataset_id:03d}_*"))
    if taken:
        raise LightsegError(
            f"'{out}' already holds {taken}: nnU-Net finds a dataset by its id, so two folders "
            "with one id would mix. Remove it, or give another --dataset-id."
        )
    cases = case_names(s.id for split in SPLITS for s in splits[split])
    staging = out / f".{dataset}.partial-{os.getpid()}"
    try:
        for folder in ("imagesTr", "labelsTr", "imagesTs"):
            (staging / folder).mkdir(parents=True)
        channels, ignore = None, False
        written: set[tuple[str, str]] = set()  # (case, folder): a sample in two splits once
        todo = [(split, s) for split in SPLITS for s in splits[split]]
        for split, sample in track(
            todo, description=f"Exporting {dataset}", console=console, transient=True
        ):
            case, folder = cases[sample.id], "imagesTs" if split == "test" else "imagesTr"
            if (case, folder) in written:
                continue
            written.add((case, folder))
            image, mask = read_pair(source, sample)
            files, names = channel_images(image, sample.id)
            if channels is None:
                channels = names
            elif names != channels:
                raise LightsegError(
                    f"Sample '{sample.id}' gives the channels {names}, the earlier ones "
                    f"{channels}: nnU-Net needs the same channels in every image. Make the data "
                    "source read every image with the same channels and bit depth."
                )
            for index, file in enumerate(files):
                file.save(staging / folder / f"{case}_{index:04d}{ENDING}")
            if folder == "imagesTr":
                labels = mask.astype(np.uint8)
                ignored = labels == IGNORE_INDEX
                ignore = ignore or bool(ignored.any())
                labels[ignored] = len(classes)  # nnU-Net: ignore is the label after the last
                Image.fromarray(labels, "L").save(staging / "labelsTr" / f"{case}{ENDING}")
        described = {
            "name": dataset,
            "description": f"lightseg run {run.resolve()}: imagesTr = its train and val split, "
            "imagesTs = its test split; lightseg_ids.json maps case names to sample ids.",
            "channel_names": {str(index): channel for index, channel in enumerate(channels)},
            "labels": label_names(classes, ignore),
            "numTraining": sum(folder == "imagesTr" for _, folder in written),
            "file_ending": ENDING,
            "overwrite_image_reader_writer": "NaturalImage2DIO",
        }
        split_file = [{part: [cases[s.id] for s in splits[part]] for part in ("train", "val")}]
        mapping = {
            "run": str(run.resolve()),
            "splits": {split: {cases[s.id]: s.id for s in splits[split]} for split in SPLITS},
        }
        for file, content in (
            ("dataset.json", described),
            (SPLIT_FILE, split_file),
            (IDS, mapping),
        ):
            (staging / file).write_text(json.dumps(content, indent=2) + "\n")
        os.replace(staging, out / dataset)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print_recipe(run, out, dataset_id, dataset)
    return out / dataset


def print_recipe(run: Path, out: Path, dataset_id: int, dataset: str) -> None:
    """The nnU-Net commands that train on the run's train split and predict its test split."""
    raw = out.resolve()
    console.print(
        f"Wrote {raw / dataset}. With nnU-Net v2 installed (pip install nnunetv2):\n"
        f"  export nnUNet_raw={raw} nnUNet_preprocessed=<folder> nnUNet_results=<folder>\n"
        f"  nnUNetv2_plan_and_preprocess -d {dataset_id} -c 2d --verify_dataset_integrity\n"
        f"  cp {raw / dataset / SPLIT_FILE} $nnUNet_preprocessed/{dataset}/\n"
        f"  nnUNetv2_train {dataset_id} 2d 0\n"
        f"  nnUNetv2_predict -i {raw / dataset / 'imagesTs'} -o nnunet_pred "
        f"-d {dataset_id} -c 2d -f 0\n"
        f"  .venv/bin/python scripts/nnunet.py import --dataset {raw / dataset} "
        "--pred nnunet_pred --out nnunet_masks\n"
        f"  make score PRED=nnunet_masks NAME=nnunet RUN={run}",
        soft_wrap=True,
        highlight=False,
    )


def import_predictions(dataset: Path, pred: Path, out: Path, split: str = "test") -> Path:
    """Copy nnU-Net's ``<case>.png`` of ``split`` to ``out/<lightseg id>.png``; returns ``out``."""
    ids_file = dataset / IDS
    if not ids_file.is_file():
        raise LightsegError(
            f"'{ids_file}' is missing: --dataset must be the folder that scripts/nnunet.py "
            "export wrote (nnUNet_raw/Dataset<ID>_<Name>), which maps case names to sample ids."
        )
    cases = json.loads(ids_file.read_text())["splits"][split]
    if not pred.is_dir():
        raise LightsegError(f"--pred '{pred}' is not a folder: give nnUNetv2_predict's -o folder.")
    missing = [case for case in cases if not (pred / f"{case}{ENDING}").is_file()]
    if missing:
        raise LightsegError(
            f"'{pred}' holds no prediction for {len(missing)} of the {len(cases)} {split} "
            f"case(s): {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}. Predict "
            f"every image of {dataset / ('imagesTs' if split == 'test' else 'imagesTr')} "
            "(nnUNetv2_predict -i ... -o <this folder>)."
        )
    if out.exists() and any(out.iterdir()):
        raise LightsegError(
            f"--out '{out}' is not empty: make score would also read the files already there. "
            "Give a new folder, or empty this one."
        )
    out.mkdir(parents=True, exist_ok=True)
    for case, sample_id in cases.items():
        shutil.copyfile(pred / f"{case}{ENDING}", out / f"{sample_id}{ENDING}")
    console.print(
        f"Copied {len(cases)} {split} masks to {out}; score them with: make score PRED={out} "
        f"NAME=nnunet RUN={json.loads(ids_file.read_text())['run']}"
        + ("" if split == "test" else f' ARGS="split={split}"'),
        soft_wrap=True,
        highlight=False,
    )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    exporting = commands.add_parser("export", help="a run's splits as an nnU-Net v2 raw dataset")
    exporting.add_argument("--run", type=Path, required=True, help="run folder (logs/.../<time>)")
    exporting.add_argument("--out", type=Path, required=True, help="the nnUNet_raw folder")
    exporting.add_argument("--dataset-id", type=int, required=True, help="nnU-Net id, e.g. 501")
    exporting.add_argument("--name", help="dataset name (default: the data source class)")
    importing = commands.add_parser("import", help="nnU-Net predictions as <lightseg id>.png")
    importing.add_argument("--dataset", type=Path, required=True, help="the exported folder")
    importing.add_argument("--pred", type=Path, required=True, help="nnUNetv2_predict's -o")
    importing.add_argument("--out", type=Path, required=True, help="new folder for make score")
    importing.add_argument("--split", default="test", choices=SPLITS, help="default: test")
    args = parser.parse_args(argv)
    with user_errors():
        if args.command == "export":
            export(args.run, args.out, args.dataset_id, args.name)
        else:
            import_predictions(args.dataset, args.pred, args.out, args.split)


if __name__ == "__main__":
    main(sys.argv[1:])

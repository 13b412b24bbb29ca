"""Tiny VOC 2012, SBD, COCO 2017 and MADS fixtures in their official on-disk formats, and a
user's own folder of photos and masks (``data=folder``).

Each writer also has a function giving the exact label array a sample must decode to, built
here with plain numpy slices (not with the code under test).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
from PIL import Image
from pycocotools import mask as coco_mask
from torchvision.models._meta import _COCO_CATEGORIES

# --- PASCAL VOC 2012 and SBD ----------------------------------------------------------------

#: id -> (width, height); odd sizes below 64 so that evaluation pads them to 64x64.
VOC_SIZES = {
    "2007_000032": (60, 44),
    "2007_000033": (56, 42),
    "2007_000039": (52, 40),
    "2007_000042": (50, 38),
    "2007_000063": (48, 36),
    "2008_000002": (46, 34),
    "2008_000003": (44, 40),
    "2008_000008": (58, 36),
}
VOC_LISTS = {
    "train": ["2007_000032", "2007_000039", "2007_000063"],
    "val": ["2007_000033", "2007_000042"],
}
SBD_LISTS = {  # SBD train holds a VOC train id and a VOC val id, as the real lists do
    "train": ["2007_000032", "2008_000002", "2008_000003", "2007_000033"],
    "val": ["2008_000008", "2007_000042"],
}
#: VOC train + SBD train + SBD val - VOC val, by hand.
TRAIN_AUG = sorted(
    ["2007_000032", "2007_000039", "2007_000063", "2008_000002", "2008_000003", "2008_000008"]
)


def voc_palette() -> list[int]:
    """VOC's colour map: bits of the class index spread over the high bits of R, G and B."""
    palette = []
    for index in range(256):
        red = green = blue = 0
        for bit in range(8):
            red |= ((index >> (3 * bit)) & 1) << (7 - bit)
            green |= ((index >> (3 * bit + 1)) & 1) << (7 - bit)
            blue |= ((index >> (3 * bit + 2)) & 1) << (7 - bit)
        palette += [red, green, blue]
    return palette


def voc_objects(image_id: str) -> list[tuple[int, slice, slice]]:
    """(class, rows, cols) of the two objects drawn in an image: classes 1..20."""
    number = int(image_id[-3:]) + int(image_id[3])
    return [
        (number % 20 + 1, slice(4, 16), slice(5, 20)),
        ((number + 7) % 20 + 1, slice(18, 30), slice(22, 40)),
    ]


def voc_label(image_id: str, borders: bool = True) -> np.ndarray:
    """The class indices of an image; VOC's masks have a 1-pixel 255 ring around each object."""
    width, height = VOC_SIZES[image_id]
    label = np.zeros((height, width), np.uint8)
    for index, rows, cols in voc_objects(image_id):
        if borders:
            label[rows.start - 1 : rows.stop + 1, cols.start - 1 : cols.stop + 1] = 255
        label[rows, cols] = index
    return label


def write_jpeg(path: Path, width: int, height: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def write_voc(root: Path) -> Path:
    """VOCdevkit/VOC2012 as the tar unpacks: JPEGs (SBD's too), palette PNG masks, lists."""
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for seed, (image_id, (width, height)) in enumerate(VOC_SIZES.items()):
        write_jpeg(root / "JPEGImages" / f"{image_id}.jpg", width, height, seed)
    for name, ids in VOC_LISTS.items():
        (lists / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
        for image_id in ids:
            mask = Image.fromarray(voc_label(image_id))
            mask.putpalette(voc_palette())  # mode "P": pixel values stay the class indices
            mask.save(root / "SegmentationClass" / f"{image_id}.png")
    trainval = sorted(VOC_LISTS["train"] + VOC_LISTS["val"])
    (lists / "trainval.txt").write_text("".join(f"{i}\n" for i in trainval))
    return root


def write_sbd_mat(path: Path, label: np.ndarray) -> None:
    """An SBD cls/<id>.mat: struct GTcls with Segmentation, Boundaries (cell of sparse), classes."""
    boundaries = np.empty((20, 1), dtype=object)
    for index in range(20):
        boundaries[index, 0] = scipy.sparse.csc_matrix(label == index + 1, dtype=np.uint8)
    present = np.unique(label[(label > 0) & (label < 255)]).astype(np.uint8)[:, None]
    scipy.io.savemat(
        path,
        {"GTcls": {"Segmentation": label, "Boundaries": boundaries, "CategoriesPresent": present}},
    )


def write_sbd(root: Path) -> Path:
    """benchmark_RELEASE/dataset as benchmark.tgz unpacks: cls/*.mat, img/*.jpg, lists."""
    (root / "cls").mkdir(parents=True)
    ids = sorted(set(SBD_LISTS["train"] + SBD_LISTS["val"]))
    for seed, image_id in enumerate(ids):
        width, height = VOC_SIZES[image_id]
        write_jpeg(root / "img" / f"{image_id}.jpg", width, height, 100 + seed)
        write_sbd_mat(root / "cls" / f"{image_id}.mat", voc_label(image_id, borders=False))
    for name, listed in SBD_LISTS.items():
        (root / f"{name}.txt").write_text("".join(f"{i}\n" for i in listed))
    return root


# --- COCO 2017 ------------------------------------------------------------------------------

#: COCO 2017 categories from torchvision's table (index = category id, "N/A" = unused id).
COCO_CATEGORIES_JSON = [
    {"id": i, "name": name, "supercategory": "thing"}
    for i, name in enumerate(_COCO_CATEGORIES)
    if i and name != "N/A"
]
BIG = 2**31  # real annotation ids exceed int32
CROWD_ID = 900100000025

#: subset -> image id -> (file name, height, width)
COCO_IMAGES = {
    "train2017": {
        9: ("000000000009.jpg", 40, 48),
        25: ("000000000025.jpg", 36, 44),
        30: ("000000000030.jpg", 32, 40),
    },
    "val2017": {
        139: ("000000000139.jpg", 40, 40),
        285: ("000000000285.jpg", 38, 44),
    },
}
#: Every annotation as (id, image, category, iscrowd, (y0, y1, x0, x1), encoding).
COCO_OBJECTS = [
    (1, 9, 1, 0, (6, 30, 4, 20), "polygon"),  # person
    (2, 9, 17, 0, (10, 20, 16, 30), "rle"),  # cat: overlaps the person on rows 10-19, cols 16-19
    (3, 9, 38, 0, (2, 12, 30, 44), "polygon"),  # kite: not a VOC class
    (BIG + 4, 9, 1, 0, (24, 36, 10, 24), "polygon"),  # second person, overlapping the first
    (CROWD_ID, 25, 1, 1, (5, 25, 5, 20), "uncompressed"),  # crowd of people
    (BIG + 7, 25, 18, 0, (20, 30, 15, 35), "polygon"),  # dog, partly inside the crowd region
    (8, 30, 38, 0, (4, 20, 6, 30), "polygon"),  # only a kite: empty for voc21
    (9, 285, 72, 0, (4, 20, 8, 30), "polygon"),  # tv
]
#: Image 139 has no annotation at all.


def runs_column_major(region: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts: run lengths over the column-major pixels, zeros first."""
    flat = region.flatten(order="F").astype(np.uint8)
    changes = np.flatnonzero(np.diff(flat)) + 1
    bounds = [0, *changes.tolist(), flat.size]
    runs = np.diff(bounds).tolist()
    return runs if flat[0] == 0 else [0, *runs]


def coco_segmentation(box, shape, encoding):
    y0, y1, x0, x1 = box
    if encoding == "polygon":
        return [[x0, y0, x1, y0, x1, y1, x0, y1]]
    region = np.zeros(shape, np.uint8)
    region[y0:y1, x0:x1] = 1
    if encoding == "rle":
        rle = coco_mask.encode(np.asfortranarray(region))
        return {"size": list(shape), "counts": rle["counts"].decode()}
    return {"size": list(shape), "counts": runs_column_major(region)}


def coco_json(subset: str) -> dict:
    images = COCO_IMAGES[subset]
    annotations = []
    for ann_id, image_id, category, crowd, box, encoding in COCO_OBJECTS:
        if image_id not in images:
            continue
        _, height, width = images[image_id]
        y0, y1, x0, x1 = box
        annotations.append(
            {
                "id": ann_id,
                "image_id": image_id,
                "category_id": category,
                "iscrowd": crowd,
                "segmentation": coco_segmentation(box, (height, width), encoding),
                # a crowd's area does not match its pixel count in the real files either
                "area": float((y1 - y0) * (x1 - x0) + (1234 if crowd else 0)),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
            }
        )
    return {
        "info": {"description": "lightseg test fixture", "year": 2017},
        "licenses": [],
        "images": [
            {"id": i, "file_name": name, "height": h, "width": w, "license": 1}
            for i, (name, h, w) in images.items()
        ],
        "annotations": annotations,
        "categories": COCO_CATEGORIES_JSON,
    }


def write_coco(root: Path) -> Path:
    """coco/ as the three zips unpack: annotations/instances_*.json, train2017/, val2017/."""
    (root / "annotations").mkdir(parents=True)
    for subset, images in COCO_IMAGES.items():
        for seed, (name, height, width) in enumerate(images.values()):
            write_jpeg(root / subset / name, width, height, 200 + seed)
        (root / "annotations" / f"instances_{subset}.json").write_text(
            json.dumps(coco_json(subset))
        )
    return root


#: Hand mapping: VOC index of each COCO category the fixture uses, and its coco81 index.
VOC21_INDEX = {1: 15, 17: 8, 18: 12, 72: 20}  # person, cat, dog, tvmonitor
COCO81_INDEX = {1: 1, 17: 16, 18: 17, 38: 34, 72: 63}  # person, cat, dog, kite, tv


def coco_label(image_id: int, label_set: str, crowd: str = "ignore") -> np.ndarray:
    """The expected semantic mask of a fixture image, painted by hand from COCO_OBJECTS."""
    index = VOC21_INDEX if label_set == "voc21" else COCO81_INDEX
    shape = next(images[image_id][1:] for images in COCO_IMAGES.values() if image_id in images)
    label = np.zeros(shape, np.uint8)
    if image_id == 9:
        label[6:30, 4:20] = index[1]  # first person
        label[24:36, 10:24] = index[1]  # second person: same class, no conflict
        label[10:20, 16:30] = index[17]  # cat
        label[10:20, 16:20] = 255  # person and cat claim these pixels
        if label_set == "coco81":
            label[2:12, 30:44] = index[38]  # kite
    elif image_id == 25:
        label[5:25, 5:20] = 255 if crowd == "ignore" else index[1]
        label[20:30, 15:35] = index[18]  # dog
        if crowd == "label":
            label[20:25, 15:20] = 255  # person (crowd) and dog claim these pixels
    elif image_id == 30 and label_set == "coco81":
        label[4:20, 6:30] = index[38]
    elif image_id == 285:
        label[4:20, 8:30] = index[72]
    return label


# --- MADS (Kaggle) --------------------------------------------------------------------------

MADS_FOLDER = "segmentation_full_body_mads_dataset_1192_img"
MADS_FRAMES = [
    "HipHop_HipHop4_C1_00810.png",
    "HipHop_HipHop4_C1_00820.png",
    "Jazz_Jazz1_C0_00000.png",
    "Jazz_Jazz1_C0_00010.png",
    "Kata_Kata2_C1_00300.png",
    "Kata_Kata2_C1_00310.png",
    "Sports_Badminton_C0_00100.png",
    "Taichi_Taichi_S1_C1_00020.png",
]
MADS_SIZE = (48, 36)  # width, height


def mads_label(name: str) -> np.ndarray:
    """The person (1) / background (0) mask of a frame: a body-sized box that moves per frame."""
    width, height = MADS_SIZE
    shift = MADS_FRAMES.index(name)
    label = np.zeros((height, width), np.uint8)
    label[4:32, 8 + shift : 20 + shift] = 1
    return label


def mads_stored_mask(name: str) -> np.ndarray:
    """How the fixture stores a mask: RGB 0/255 with a few soft edge values (100 and 180)."""
    label = mads_label(name)
    stored = (label * 255).astype(np.uint8)
    rows, cols = np.nonzero(label)
    stored[rows.min() - 1, cols.min() : cols.max() + 1] = 100  # just outside: background
    stored[rows.min(), cols.min() : cols.max() + 1] = 180  # first person row: person
    return np.repeat(stored[..., None], 3, axis=-1)


def write_mads_folder(folder: Path, with_table: bool = True) -> Path:
    """images/, masks/ (same names) and df.csv (pandas-style index column, relative paths)."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    width, height = MADS_SIZE
    for seed, name in enumerate(MADS_FRAMES):
        rng = np.random.default_rng(300 + seed)
        frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(frame).save(folder / "images" / name)
        Image.fromarray(mads_stored_mask(name)).save(folder / "masks" / name)
    if with_table:
        with open(folder / "df.csv", "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["", "images", "masks"])
            for row, name in enumerate(MADS_FRAMES):
                writer.writerow([row, f"images/{name}", f"masks/{name}"])
    return folder


def write_mads(root: Path) -> Path:
    """mads/ holding the Kaggle folder nested once more inside itself, as the zip may unpack."""
    write_mads_folder(root / MADS_FOLDER / MADS_FOLDER)
    return root


# --- Your own data (data=folder) ------------------------------------------------------------

#: id -> (width, height, lesion box rows, cols): JPEG photos with same-stem PNG 0/255 masks.
FOLDER_CASES = {
    "case_001": (40, 30, slice(4, 14), slice(6, 20)),
    "case_002": (42, 32, slice(10, 24), slice(3, 15)),
    "case_003": (38, 30, slice(2, 9), slice(20, 33)),
    "case_004": (44, 34, slice(12, 30), slice(10, 40)),
    "case_005": (40, 36, slice(0, 5), slice(0, 8)),
    "case_006": (36, 30, slice(15, 28), slice(5, 30)),
    "case_007": (40, 32, slice(6, 26), slice(12, 22)),
    "case_008": (46, 30, slice(3, 20), slice(25, 44)),
    "case_009": (40, 30, slice(8, 16), slice(8, 16)),
    "case_010": (38, 34, slice(20, 33), slice(1, 37)),
}


def folder_label(case: str) -> np.ndarray:
    """The 0/1 mask a folder fixture case decodes to: a box of foreground."""
    width, height, rows, cols = FOLDER_CASES[case]
    label = np.zeros((height, width), np.uint8)
    label[rows, cols] = 1
    return label


def write_folder(root: Path, cases=FOLDER_CASES) -> Path:
    """A user's folder: images/<id>.jpg (RGB photos), masks/<id>.png (0 = background, 255)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for seed, case in enumerate(cases):
        width, height, _, _ = FOLDER_CASES[case]
        write_jpeg(root / "images" / f"{case}.jpg", width, height, 400 + seed)
        Image.fromarray(folder_label(case) * 255).save(root / "masks" / f"{case}.png")
    return root


#: Folder under the data dir -> writer (merged into conftest's DATASET_FIXTURES).
OFFICIAL_FIXTURES = {
    "VOCdevkit/VOC2012": write_voc,
    "benchmark_RELEASE/dataset": write_sbd,
    "coco": write_coco,
    "mads": write_mads,
    "folder": write_folder,
}

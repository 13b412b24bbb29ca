"""COCO 2017 (Lin et al., ECCV 2014) as semantic segmentation from its instance annotations.

``root`` (``${paths.data_dir}/coco``) is read as the official zips unpack (README: Datasets).
``voc21`` maps the 20 VOC categories to VOC's indices (as torchvision's reference does),
``coco81`` the 80 thing categories in id order to 1..80. Decoding polygons every epoch is slow,
so ``prepare()`` writes each mask once as a PNG, keyed on the json's SHA-1 and the settings.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools.coco import COCO as CocoApi
from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights

from lightseg.data.source import (
    Sample,
    SegmentationSource,
    cache_home,
    official_split,
    read_label_png,
    read_rgb,
    subset_map,
)
from lightseg.data.voc import VOC_CLASSES
from lightseg.errors import LightsegError
from lightseg.task import IGNORE_INDEX

log = logging.getLogger(__name__)

#: COCO 2017's 80 thing categories: id -> name (ids are not contiguous), as torchvision has them.
COCO_CATEGORIES = {
    coco_id: name
    for coco_id, name in enumerate(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])
    if name not in ("__background__", "N/A")  # N/A: ids COCO 2017 does not use
}
#: COCO category id of each VOC class 1..20 (airplane = aeroplane, couch = sofa, tv = tvmonitor).
VOC_FROM_COCO = (5, 2, 16, 9, 44, 6, 3, 17, 62, 21, 67, 18, 19, 4, 1, 64, 20, 63, 7, 72)
#: label set -> (class names, COCO category id -> class index).
LABEL_SETS: dict[str, tuple[tuple[str, ...], dict[int, int]]] = {
    "voc21": (VOC_CLASSES, {cat: index + 1 for index, cat in enumerate(VOC_FROM_COCO)}),
    "coco81": (
        ("background", *COCO_CATEGORIES.values()),
        {cat: index + 1 for index, cat in enumerate(COCO_CATEGORIES)},
    ),
}
CROWD_POLICIES = ("ignore", "label")
DEFAULT_SPLITS = {"train": "train2017", "val": "val2017", "test": "val2017"}
CACHE_VERSION = 1  # bump when the rasterisation changes, so old caches are rebuilt
MANIFEST = "manifest.json"


class COCO(SegmentationSource):
    """COCO 2017 instances as semantic masks; ``test`` defaults to val2017 (test has no labels)."""

    how_to_get = (
        "Run `python -m lightseg.data.download data=coco` (downloads train2017.zip 18 GB, "
        "val2017.zip 1 GB and annotations_trainval2017.zip 241 MB from "
        "https://cocodataset.org/#download), or "
        "download them yourself and unzip all three into '<data_dir>/coco/', so that "
        "'<data_dir>/coco/annotations/instances_val2017.json' and '<data_dir>/coco/val2017/' exist."
    )

    def __init__(
        self,
        root: str | Path,
        label_set: str = "voc21",
        crowd: str = "ignore",
        drop_empty: bool = False,
        splits: Mapping[str, str] | None = None,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(root)
        if label_set not in LABEL_SETS:
            raise LightsegError(
                f"data.source.label_set='{label_set}' is not one of {sorted(LABEL_SETS)}."
            )
        if crowd not in CROWD_POLICIES:
            raise LightsegError(f"data.source.crowd='{crowd}' is not one of {CROWD_POLICIES}.")
        self.label_set, self.crowd, self.drop_empty = label_set, crowd, bool(drop_empty)
        self.classes, self.class_of = LABEL_SETS[label_set]
        self.splits = subset_map(splits or DEFAULT_SPLITS)
        self.subsets = sorted(set(self.splits.values()))
        self.cache_root = Path(cache_dir or cache_home() / "coco_masks").expanduser()
        self.unlabelled: set[str] = set()  # ids of images with no pixel of the label set

    def annotations(self, subset: str) -> Path:
        return self.root / "annotations" / f"instances_{subset}.json"

    def cache(self, subset: str) -> Path:
        return self.cache_root / f"{subset}-{self.label_set}-crowd_{self.crowd}"

    def cache_key(self, subset: str) -> dict:
        """What a cache was built from: another key means it is stale."""
        path = self.annotations(subset)
        if not path.is_file() or not (self.root / subset).is_dir():
            raise self.missing(path if not path.is_file() else self.root / subset)
        stat = path.stat()
        return {
            "version": CACHE_VERSION,
            "annotations_sha1": file_sha1(str(path.resolve()), stat.st_size, stat.st_mtime_ns),
            "label_set": self.label_set,
            "crowd": self.crowd,
        }

    def prepare(self) -> None:
        """Build (or keep) the PNG mask cache of every subset the splits use."""
        for subset in self.subsets:
            key, folder = self.cache_key(subset), self.cache(subset)
            if read_manifest(folder).get("key") == key:
                log.info("Reusing the COCO %s mask cache in %s", subset, folder)
                continue
            log.info("Building the COCO %s mask cache (decoded once) in %s", subset, folder)
            build_cache(self.annotations(subset), folder, key, self.class_of, self.crowd)

    def find(self) -> list[Sample]:
        samples = []
        for subset in self.subsets:
            folder = self.cache(subset)
            manifest = read_manifest(folder)
            if manifest.get("key") != self.cache_key(subset):
                raise LightsegError(
                    f"The COCO mask cache '{folder}' is missing or out of date with "
                    f"'{self.annotations(subset)}'. It is built by prepare(), which lightseg "
                    "calls before find(); call that first."
                )
            for image_id, file_name, labelled in manifest["images"]:
                image = self.root / subset / file_name
                if not image.is_file():
                    raise LightsegError(
                        f"'{self.annotations(subset)}' lists image {image_id} as '{file_name}', "
                        f"but '{image}' does not exist. Unzip {subset}.zip into '{self.root}'."
                    )
                stem = Path(file_name).stem
                samples.append(Sample(stem, image, folder / f"{stem}.png", subset=subset))
                if not labelled:
                    self.unlabelled.add(stem)
        return samples

    def split(self, samples, fractions, seed) -> dict[str, list[Sample]]:
        """The official subsets named by ``splits``; ``data.split`` fractions do not apply."""
        splits = official_split(samples, self.splits)
        if self.drop_empty:
            splits["train"] = [s for s in splits["train"] if s.id not in self.unlabelled]
        return splits

    def read(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        return read_rgb(sample.image), read_label_png(sample.mask, len(self.classes))


@functools.lru_cache(maxsize=16)
def file_sha1(path: str, size: int, mtime_ns: int) -> str:
    """SHA-1 of a file's bytes; memoised per (path, size, mtime) as the json may be 450 MB."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha1").hexdigest()


def read_manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def load_coco(path: Path) -> CocoApi:
    """The annotation file as a pycocotools index, after checking it is COCO instances json."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as error:
        raise LightsegError(
            f"Cannot read COCO annotations '{path}' ({error}). Re-extract "
            "annotations_trainval2017.zip."
        ) from None
    required = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in required):
        raise LightsegError(
            f"'{path}' is not a COCO instances file: it needs the lists {list(required)}. Use "
            "annotations/instances_<subset>.json from annotations_trainval2017.zip."
        )
    names = {c.get("id"): c.get("name") for c in data["categories"] if isinstance(c, dict)}
    wrong = {i: n for i, n in COCO_CATEGORIES.items() if names.get(i, n) != n}
    if wrong:
        raise LightsegError(
            f"'{path}' names categories differently from COCO 2017 (expected {wrong}); "
            "lightseg's label sets are defined on COCO 2017's category ids."
        )
    api = CocoApi()
    api.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        api.createIndex()
    return api


def build_cache(
    annotations: Path, folder: Path, key: dict, class_of: Mapping[int, int], crowd: str
) -> None:
    """Write one PNG mask per image into ``folder``, then the manifest; atomic per folder."""
    api = load_coco(annotations)
    partial = folder.with_name(f"{folder.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)  # a killed builder's: the caller holds the lock
    partial.mkdir(parents=True)
    images = []
    ids = sorted(api.imgs)
    for count, image_id in enumerate(ids, 1):
        info = api.imgs[image_id]
        try:
            height, width, file_name = int(info["height"]), int(info["width"]), info["file_name"]
        except (KeyError, TypeError, ValueError):
            raise LightsegError(
                f"'{annotations}': image entry {info} lacks height, width or file_name."
            ) from None
        mask = semantic_mask(api, annotations, image_id, (height, width), class_of, crowd)
        Image.fromarray(mask).save(partial / f"{Path(file_name).stem}.png")
        images.append((image_id, file_name, bool(((mask > 0) & (mask != IGNORE_INDEX)).any())))
        if count % 5000 == 0:
            log.info("COCO mask cache: %d / %d images", count, len(ids))
    (partial / MANIFEST).write_text(json.dumps({"key": key, "images": images}))
    shutil.rmtree(folder, ignore_errors=True)  # an out-of-date cache (the caller holds the lock)
    partial.rename(folder)


def semantic_mask(
    api: CocoApi, path: Path, image_id: int, shape: tuple, class_of: Mapping[int, int], crowd: str
) -> np.ndarray:
    """One image's uint8 class-index mask: pixels two classes claim are 255, and so are crowd
    regions no individual annotation labels (``crowd="ignore"``)."""
    regions: dict[int, np.ndarray] = {}  # class index -> union of its individual annotations
    crowd_region = np.zeros(shape, bool)
    for annotation in api.imgToAnns.get(image_id, []):
        index = class_of.get(annotation.get("category_id"))
        if index is None:  # a category outside the label set: background
            continue
        try:
            pixels = api.annToMask(annotation).astype(bool)
        except Exception as error:  # pycocotools raises many types for a bad segmentation
            raise LightsegError(
                f"'{path}': cannot decode the segmentation of annotation "
                f"{annotation.get('id')} ({type(error).__name__}: {error})."
            ) from None
        if annotation.get("iscrowd") and crowd == "ignore":
            crowd_region |= pixels
        else:
            regions[index] = regions.get(index, np.zeros(shape, bool)) | pixels
    mask = np.zeros(shape, np.uint8)
    claims = np.zeros(shape, np.uint8)
    for index, region in regions.items():
        mask[region] = index
        claims += region
    mask[claims > 1] = IGNORE_INDEX  # two different classes claim the pixel
    mask[crowd_region & (claims == 0)] = IGNORE_INDEX
    return mask

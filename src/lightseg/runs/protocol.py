"""The protocol card: how a number was obtained, stored beside the metrics of every
``metrics.json`` and ``eval.json`` (its fields: README, "Results tables"). Two results are
comparable only if scored on the same images the same way, which the numbers cannot tell, so
``make table`` pairs only rows whose cards agree on what matters (:func:`differences`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hydra.utils import get_class

from lightseg.config import plain
from lightseg.data.source import Sample, fingerprint
from lightseg.runs.folder import RunFolder

VERSION = 1
#: How the metrics treat empty masks (lightseg.metrics), recorded so a reader can compare.
EMPTY = (
    "a class absent from truth and prediction has no IoU/Dice (left out of means); per image, "
    "binary Dice/Jaccard score 1 when both are empty, HD95/ASSD 0 when both are empty and the "
    "image diagonal when one is"
)
#: Model config keys that say where the starting weights came from.
PRETRAINED_KEYS = ("arch", "encoder_name", "encoder_weights", "encoder_weights_file", "weights")
PRETRAINED_KEYS += ("from_pretrained",)
INFERENCE_KEYS = ("mode", "image_size", "stride", "flip", "scales", "window_weights")
INFERENCE_KEYS += ("temperature",)


def ids_digest(ids: Iterable[str]) -> str:
    """The 16-digit SHA-256 of an id list written one per line (``splits/<split>.txt``)."""
    return hashlib.sha256("".join(f"{i}\n" for i in ids).encode()).hexdigest()[:16]


def every_sample(splits: Mapping[str, Sequence[Sample]]) -> list[Sample]:
    """The union of the splits, by id: what ``split=all`` scores."""
    return sorted({s.id: s for part in splits.values() for s in part}.values(), key=lambda s: s.id)


def split_kind(datamodule) -> str:
    """How the datamodule's splits were made: the card's ``split.kind``."""
    split, splits = datamodule.split, datamodule.splits or {}
    if split.folds:
        return f"k-fold {split.fold + 1} of {split.folds} (seed {split.seed})"
    if any(s.subset for part in splits.values() for s in part):
        return "lists" if getattr(datamodule.source, "split_lists", None) else "official"
    return f"stratified random (seed {split.seed})"


def metric_definitions(config: Mapping[str, Any]) -> dict[str, str]:
    """``{name: "<class>(options): pooled over the split | mean over images"}``."""
    from lightseg.metrics import ConfusionMatrixMetric, PerImageMetric  # metrics import torch

    definitions = {}
    for name, node in (config or {}).items():
        if not node:
            continue
        target = str(node.get("_target_", ""))
        options = ", ".join(f"{k}={v}" for k, v in sorted(node.items()) if k != "_target_")
        try:
            kind = get_class(target)
        except Exception:
            kind = object
        averaging = (
            "pooled over the split"
            if issubclass(kind, ConfusionMatrixMetric)
            else "mean over images"
            if issubclass(kind, PerImageMetric)
            else "as its class computes"
        )
        definitions[name] = f"{target.rsplit('.', 1)[-1]}({options}): {averaging}"
    return definitions


def inference_record(settings: Mapping[str, Any], crf: Any = None, members: int = 1) -> dict:
    """The inference fields of a card from a Segmenter's (or the test stage's) settings."""
    record = {key: settings.get(key) for key in INFERENCE_KEYS}
    for key in ("image_size", "stride", "scales"):
        if record[key] is not None:
            record[key] = [float(v) if key == "scales" else int(v) for v in record[key]]
    return {**record, "crf": crf, "members": members}


def card(
    datamodule,
    scored: str,
    samples: Sequence[Sample],
    resolution: str,
    metrics: Mapping[str, Any],
    inference: dict | None,
    model: Mapping[str, Any] | None,
    budget: dict | None,
    external: bool = False,
) -> dict[str, Any]:
    """The protocol record of numbers computed on ``samples`` (the ``scored`` split)."""
    splits = datamodule.splits
    hashes = {name: ids_digest(s.id for s in part) for name, part in splits.items()}
    hashes[scored] = ids_digest(s.id for s in samples)
    kind = "all" if scored == "all" else split_kind(datamodule)
    split = {"kind": f"external: {kind}" if external else kind, "scored": scored, "hashes": hashes}
    scoring = {"resolution": resolution, "metrics": metric_definitions(metrics), "empty": EMPTY}
    union = every_sample(splits)
    return {
        "version": VERSION,
        "dataset": {
            "name": type(datamodule.source).__name__,
            "fingerprint": fingerprint(datamodule.source, union)[:16],
            "images": len(union),
        },
        "split": split,
        "scoring": scoring,
        "inference": inference,
        "pretrained": {k: v for k, v in (model or {}).items() if k in PRETRAINED_KEYS},
        "budget": budget,
    }


def training_card(experiment, trainer) -> dict[str, Any]:
    """The card of the test stage: the test split at the training size, no TTA."""
    from lightseg.checkpoints import checkpoint_position  # imports the models: not for tables

    cfg, datamodule, module = experiment.cfg, experiment.datamodule, experiment.module
    stored = dict(module.hparams.get("inference") or {})
    height, width = datamodule.image_size
    # last.ckpt's position: under ddp_spawn this process's trainer never counted the steps
    last = RunFolder(cfg.paths.output_dir).last
    position = checkpoint_position(last) if last.is_file() else None
    epochs = position["epoch"] + 1 if position else int(trainer.current_epoch)
    steps = position["step"] if position else int(trainer.global_step)
    batch = datamodule.device_batch_size() * trainer.world_size
    images = steps * batch * int(trainer.accumulate_grad_batches)
    budget = {"epochs": epochs, "steps": steps, "images_seen": images}
    recipe = plain(cfg.get("recipe") or {})  # recipe=auto: the plan and what overrode it
    planned = {"recipe": recipe} if recipe.get("lines") else {}
    return planned | card(
        datamodule,
        "test",
        datamodule.splits["test"],
        f"training size {height}x{width}",
        plain(cfg.get("metrics")) or {},
        inference_record({**stored, "flip": False, "scales": [1.0], "temperature": 1.0}),
        plain(cfg.model),
        budget,
    )


# --- comparing cards (make table) -------------------------------------------------------------


def metric_name(metric: str, definitions: Mapping[str, str]) -> str | None:
    """The metrics config key a table column comes from: ``test/iou_lesion`` -> ``iou``."""
    name = metric.split("/", 1)[-1]
    keys = [k for k in definitions if name == k or name.startswith(f"{k}_")]
    return max(keys, key=len) if keys else None


def describe_inference(inference: Mapping[str, Any] | None) -> str:
    """``whole 64x64, flip + scales 0.75/1/1.25, T=1.2, CRF, ensemble of 3`` (brief)."""
    if inference is None:
        return "masks made elsewhere"
    size = "x".join(str(v) for v in inference.get("image_size") or []) or "?"
    parts = [f"{inference.get('mode')} {size}"]
    views = ["flip"] if inference.get("flip") else []
    scales = inference.get("scales") or [1.0]
    views += [f"scales {'/'.join(f'{s:g}' for s in scales)}"] if list(scales) != [1.0] else []
    parts.append(" + ".join(views) or "no TTA")
    if inference.get("temperature") not in (None, 1, 1.0):
        parts.append(f"T={inference['temperature']}")
    if inference.get("crf"):
        parts.append("CRF")
    if (inference.get("members") or 1) > 1:
        parts.append(f"ensemble of {inference['members']}")
    return ", ".join(parts)


def comparison(protocol: Mapping[str, Any] | None, metric: str, variant: str | None = None):
    """What must agree for two results of ``metric`` to be paired, as ``{field: value}``; None
    for a result without a card (written before lightseg recorded one)."""
    if not protocol:
        return None
    split, scoring = protocol.get("split") or {}, protocol.get("scoring") or {}
    definitions = scoring.get("metrics") or {}
    inference = (protocol.get("variants") or {}).get(variant, protocol.get("inference"))
    return {
        "images": (split.get("hashes") or {}).get(split.get("scored")),
        "resolution": scoring.get("resolution"),
        "definition": definitions.get(metric_name(metric, definitions)),
        "inference": None if inference is None else describe_inference(inference),
    }


#: Why two rows are not paired, by the first field in which they differ.
REASONS = {
    "images": "different test images: split hashes differ",
    "resolution": "scored at different resolutions",
    "definition": "different metric definitions",
    "inference": "different inference",
}


def differences(mine: dict | None, theirs: dict | None) -> str | None:
    """One line on why two comparison records (:func:`comparison`) must not be paired, or None
    when they may. Masks made elsewhere (inference None) pair with any inference."""
    if mine is None or theirs is None:
        return None if mine is theirs else "protocol unknown for one of them (no protocol card)"
    for key, reason in REASONS.items():
        a, b = mine.get(key), theirs.get(key)
        if a != b and not (key == "inference" and None in (a, b)):
            return reason if key == "images" else f"{reason}: {a} vs {b}"
    return None


def describe(protocol: Mapping[str, Any] | None, variant: str | None = None) -> str:
    """A row's protocol in a few words, for a table's caption (a published row's card may
    give only some fields: the others are left out)."""
    if not protocol:
        return "unknown (no protocol card)"
    split, scoring = protocol.get("split") or {}, protocol.get("scoring") or {}
    name, scored = (protocol.get("dataset") or {}).get("name"), split.get("scored")
    digest = (split.get("hashes") or {}).get(scored)
    resolution = scoring.get("resolution")
    parts = [
        " ".join(str(p) for p in (name, scored and f"{scored} split") if p),
        split.get("kind"),
        digest and f"ids {digest}",
        resolution and f"scored at {'native resolution' if resolution == 'native' else resolution}",
    ]
    if "inference" in protocol:
        inference = (protocol.get("variants") or {}).get(variant, protocol["inference"])
        parts.append(describe_inference(inference))
    return ", ".join(p for p in parts if p) or "no protocol fields"

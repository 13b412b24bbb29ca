"""How sure a model is of each image, and whether that sureness ranks its errors.

:func:`normalized_entropy`: each pixel's predictive entropy over log(C), 0 for one-hot and 1 for
uniform whatever C; its image mean is ``uncertainty`` (make eval's per_image.csv, make predict's
``<name>_uncertainty.png``). Over several averaged predictions (TTA views, ensemble members)
``disagreement`` is the mutual information, the epistemic part of BALD (Houlsby et al. 2011).
:func:`coverage_curve` is the selective-prediction view (Geifman & El-Yaniv 2017): the mean Dice
of the k most certain images; its area nears the oracle's if uncertainty ranks failures last.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch


def normalized_entropy(probabilities: torch.Tensor) -> torch.Tensor:
    """Per-pixel entropy [H, W] of class probabilities [C, H, W] over log(C): in [0, 1]
    (0 log 0 counts 0; clamped, as float sums of probabilities may pass 1 by an ulp)."""
    classes = probabilities.shape[0]
    entropy = torch.special.entr(probabilities.double()).sum(0) / math.log(classes)
    return entropy.clamp(0.0, 1.0)


def mean_entropy(probabilities: torch.Tensor) -> float:
    """An image's uncertainty: the mean of :func:`normalized_entropy` over its pixels."""
    return float(normalized_entropy(probabilities).mean())


def coverage_curve(uncertainty: Sequence[float], values: Sequence[float]) -> dict | None:
    """Mean ``values`` (higher is better, e.g. each image's Dice) of the k most certain images,
    k = 1..N (ties in uncertainty keep the given order), as ``curve`` [[k/N, mean], ...]; its
    ``area`` (the mean over k), the ``oracle_curve`` and ``oracle_area`` of the best-first
    order, and ``full``, the mean over all images. Images without a value or an uncertainty
    (NaN) are left out; None if none remains."""
    pairs = [
        (float(u), float(v))
        for u, v in zip(uncertainty, values, strict=True)
        if not (math.isnan(u) or math.isnan(v))
    ]
    if not pairs:
        return None
    count = np.arange(1, len(pairs) + 1)
    ranked = np.array([v for _, v in sorted(pairs, key=lambda pair: pair[0])])
    kept = np.cumsum(ranked) / count
    oracle = np.cumsum(np.sort(ranked)[::-1]) / count
    return {
        "area": float(kept.mean()),
        "oracle_area": float(oracle.mean()),
        "full": float(kept[-1]),
        "curve": np.stack([count / len(pairs), kept], 1).tolist(),
        "oracle_curve": np.stack([count / len(pairs), oracle], 1).tolist(),
    }


def coverage_figure(coverage: dict[str, dict], title: str):
    """Each variant's curve (solid), its oracle (dashed) and its mean at full coverage (dotted)
    as a plain matplotlib ``Figure`` (as :func:`lightseg.visualize.confusion_figure`)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4.5))
    axes = figure.add_subplot()
    for index, (variant, entry) in enumerate(coverage.items()):
        style = {"color": f"C{index}"}
        label = f"{variant} (area {entry['area']:.3f})"
        axes.plot(*np.array(entry["curve"]).T, **style, label=label)
        label = f"{variant} oracle (area {entry['oracle_area']:.3f})"
        axes.plot(*np.array(entry["oracle_curve"]).T, **style, linestyle="--", label=label)
        label = f"{variant} all images ({entry['full']:.3f})"
        axes.axhline(entry["full"], **style, linestyle=":", linewidth=1, label=label)
    metric = next(iter(coverage.values()))["metric"]
    axes.set(
        xlabel="coverage: share of images kept, most certain first",
        ylabel=f"mean {metric} of the kept images",
        title=title,
        xlim=(0, 1.02),
    )
    axes.legend(fontsize="small")
    figure.tight_layout()
    return figure

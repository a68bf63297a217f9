"""Instances from a semantic mask: connected components per class, with a minimum area; quality figures."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from synthaug.annotators.base import Annotation
from synthaug.sample import Instance
from synthaug.vocabulary import IGNORE_INDEX


def instances_from_mask(
    mask: np.ndarray, min_area: float = 0.002, background_id: int | None = 0, confidence: np.ndarray | None = None
) -> list[Instance]:
    """One Instance per 8-connected component of each class; components under `min_area` are dropped.

    `min_area` below 1 is a share of the image, from 1 up a pixel count. An instance's score is
    the mean confidence inside it, when a confidence map is given.
    """
    limit = min_area * mask.size if min_area < 1 else min_area
    out = []
    for c in np.unique(mask):
        if c in (IGNORE_INDEX, background_id):
            continue
        labels, n = ndimage.label(mask == c, structure=np.ones((3, 3), bool))
        for k in range(1, n + 1):
            comp = labels == k
            if comp.sum() < limit:
                continue
            score = float(confidence[comp].mean()) if confidence is not None else None
            out.append(Instance.from_mask(int(c), comp, score))
    return out


def quality_figures(
    ann: Annotation, num_targets: int, min_area: float = 0.002, background_id: int = 0
) -> dict[str, float]:
    """Per-sample figures to filter on: confidence inside the masks, ignore share, mask area, objects found."""
    mask = ann.mask
    labelled = (mask != IGNORE_INDEX) & (mask != background_id)
    limit = min_area * mask.size if min_area < 1 else min_area
    found = sum(int((ann.winner == k).sum() >= limit) for k in range(num_targets))
    return {
        "mean_confidence": float(ann.confidence[labelled].mean()) if labelled.any() else 0.0,
        "ignore_share": float((mask == IGNORE_INDEX).mean()),
        "foreground_share": float(labelled.mean()),
        "objects_found": float(found / num_targets) if num_targets else 1.0,
    }

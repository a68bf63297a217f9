"""Instances from a semantic mask: connected components per class, with a minimum area; quality figures."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from synthaug.annotators.base import Annotation
from synthaug.sample import Instance
from synthaug.vocabulary import IGNORE_INDEX


def area_limit(min_area: float, size: int) -> float:
    """`min_area` in pixels: below 1 a share of an image of `size` pixels, from 1 up a pixel count."""
    return min_area * size if min_area < 1 else min_area


def components(region: np.ndarray, limit: float = 0) -> Iterator[np.ndarray]:
    """The 8-connected components of a bool mask that have at least `limit` pixels, in raster order."""
    labels, n = ndimage.label(region, structure=np.ones((3, 3), bool))
    for k in range(1, n + 1):
        comp = labels == k
        if comp.sum() >= limit:
            yield comp


def instances_from_mask(
    mask: np.ndarray, min_area: float = 0.002, background_id: int | None = 0, confidence: np.ndarray | None = None
) -> list[Instance]:
    """One Instance per 8-connected component of each class; components under `min_area` are dropped.

    `min_area` below 1 is a share of the image, from 1 up a pixel count. An instance's score is
    the mean confidence inside it, when a confidence map is given.
    """
    limit = area_limit(min_area, mask.size)
    out = []
    for c in np.unique(mask):
        if c in (IGNORE_INDEX, background_id):
            continue
        for comp in components(mask == c, limit):
            score = float(confidence[comp].mean()) if confidence is not None else None
            out.append(Instance.from_mask(int(c), comp, score))
    return out


def instances_from_winner(ann: Annotation, min_area: float = 0.002, background_id: int | None = 0) -> list[Instance]:
    """One Instance per 8-connected component of each winning object; two touching objects of one class
    stay two. A component that holds several predicted instances (`ann.instance_ids`) of at least
    `min_area` each is split between them, every pixel going to the nearest one."""
    mask, winner = ann.mask, ann.winner
    limit = area_limit(min_area, mask.size)
    labelled = (winner >= 0) & (mask != IGNORE_INDEX) & (mask != background_id)
    out = []
    for k in np.unique(winner[labelled]):
        for comp in components(labelled & (winner == k), limit):
            for part in split_component(comp, ann.instance_ids, limit):
                cls = np.bincount(mask[part]).argmax()
                out.append(Instance.from_mask(int(cls), part, float(ann.confidence[part].mean())))
    return out


def split_component(comp: np.ndarray, ids: np.ndarray | None, limit: float) -> list[np.ndarray]:
    """`comp` (H, W) bool as one part, or split between the predicted instances in it that reach `limit`."""
    if ids is None:
        return [comp]
    inside = ids[comp]
    keep = [i for i, c in zip(*np.unique(inside[inside >= 0], return_counts=True)) if c >= limit]
    if len(keep) < 2:
        return [comp]
    seeds = comp & np.isin(ids, keep)
    # Every pixel of the component takes the id of its nearest seed pixel.
    _, (iy, ix) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    nearest = ids[iy, ix]
    return [comp & (nearest == i) for i in keep]


def annotation_instances(ann: Annotation, min_area: float = 0.002, background_id: int | None = 0) -> list[Instance]:
    """The instances of an annotation: by winning object where it separates objects, else by class components."""
    if ann.by_object:
        return instances_from_winner(ann, min_area, background_id)
    return instances_from_mask(ann.mask, min_area, background_id, confidence=ann.confidence)


def quality_figures(
    ann: Annotation, num_targets: int, min_area: float = 0.002, background_id: int = 0
) -> dict[str, float]:
    """Per-sample figures to filter on: confidence inside the masks, ignore share, mask area, objects found."""
    mask = ann.mask
    labelled = (mask != IGNORE_INDEX) & (mask != background_id)
    limit = area_limit(min_area, mask.size)
    found = sum(int((ann.winner == k).sum() >= limit) for k in range(num_targets))
    return {
        "mean_confidence": float(ann.confidence[labelled].mean()) if labelled.any() else 0.0,
        "ignore_share": float((mask == IGNORE_INDEX).mean()),
        "foreground_share": float(labelled.mean()),
        "objects_found": float(found / num_targets) if num_targets else 1.0,
    }

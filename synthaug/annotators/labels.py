"""Object maps -> a label: the one rule every annotator's maps go through (see LabelRule)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from synthaug.annotators.base import Annotation
from synthaug.vocabulary import IGNORE_INDEX

THRESHOLDS = ("otsu", "residual")


@dataclass(frozen=True)
class LabelRule:
    """How (K, H, W) object maps in [0, 1] become a semantic mask.

    A pixel goes to its strongest object when that object's value clears `threshold`: a number
    (DiffuMask's fixed cut), 'otsu' (a cut per map), or 'residual' (it beats the background's
    probability, 1 - the objects' sum, for maps that are probabilities). Otherwise it is background,
    or ignore (255) where no background class exists. Values in [`ignore_from`, threshold) are
    ignore (Dataset Diffusion's uncertainty band), and so is any pixel whose confidence (its winning
    value, or the background's under 'residual') is below `ignore_below`.
    """

    threshold: float | str = 0.5
    ignore_from: float | None = None
    ignore_below: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.threshold, str) and self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold={self.threshold!r}: use a number in [0, 1] or one of {THRESHOLDS}")
        if not isinstance(self.threshold, str) and not 0.0 <= float(self.threshold) <= 1.0:
            raise ValueError(f"threshold={self.threshold} must lie in [0, 1]")
        if self.ignore_from is not None and (isinstance(self.threshold, str) or self.ignore_from > self.threshold):
            raise ValueError(f"ignore_from={self.ignore_from} needs a numeric threshold >= it (got {self.threshold!r})")
        if not 0.0 <= self.ignore_below < 1.0:
            raise ValueError(f"ignore_below={self.ignore_below} must lie in [0, 1)")


def otsu_threshold(values: np.ndarray, bins: int = 64) -> float:
    """Otsu's threshold of values in [0, 1]: the cut that maximises between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m = np.cumsum(p * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m[-1] * w0 - m) ** 2 / (w0 * (1 - w0))
    between = np.nan_to_num(between)
    return float(edges[int(np.argmax(between)) + 1])


def label_maps(
    maps: torch.Tensor,
    class_ids: Sequence[int],
    background_id: int | None,
    rule: LabelRule,
    by_object: bool = False,
    instance_ids: np.ndarray | None = None,
) -> Annotation:
    """The Annotation of (K, H, W) maps of the objects whose classes are `class_ids`, by `rule`."""
    arr = maps.detach().float().cpu().numpy()
    H, W = arr.shape[-2:]
    unlabelled = IGNORE_INDEX if background_id is None else background_id
    if arr.shape[0] == 0:
        conf = np.full((H, W), 1.0 if rule.threshold == "residual" else 0.0, np.float32)
        return Annotation(np.full((H, W), unlabelled, np.uint8), np.full((H, W), -1, np.int64), conf, by_object)
    if len(class_ids) != arr.shape[0]:
        raise ValueError(f"{arr.shape[0]} object maps but {len(class_ids)} class ids: give one class id per object")
    best = arr.argmax(0)
    value = np.take_along_axis(arr, best[None], 0)[0]
    if rule.threshold == "residual":
        rest = np.clip(1.0 - arr.sum(0), 0.0, 1.0)
        fg, conf = value > rest, np.maximum(value, rest)
    else:
        cuts = np.array([otsu_threshold(m) if rule.threshold == "otsu" else float(rule.threshold) for m in arr])
        fg, conf = value >= cuts[best], value
    sem = np.where(fg, np.asarray(class_ids, dtype=np.uint8)[best], unlabelled).astype(np.uint8)
    if rule.ignore_from is not None:
        sem[(value >= rule.ignore_from) & ~fg] = IGNORE_INDEX
    if rule.ignore_below > 0:
        sem[conf < rule.ignore_below] = IGNORE_INDEX
    if instance_ids is not None and instance_ids.shape != sem.shape:
        instance_ids = None
    return Annotation(sem, np.where(fg, best, -1), conf.astype(np.float32), by_object, instance_ids)

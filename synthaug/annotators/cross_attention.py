"""Cross-attention annotation (DiffuMask): per-object maps from the words' attention, then a threshold.

Maps captured at several factors are summed over the tokens of every word that describes an
object (class word plus attributes such as its colour), resized to the image, averaged over
factors, min-max normalised per object, and thresholded. A pixel takes the class of its strongest
object where that object's map clears the threshold; elsewhere it is background.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from synthaug.annotators.base import ObjectMaps
from synthaug.annotators.labels import LabelRule
from synthaug.attention import CapturedAttention, CaptureSpec, default_cross_factors

THRESHOLDS = ("otsu",)  # besides a number


@dataclass(frozen=True)
class CrossAttentionParams:
    """Which captured factors to use and how to threshold (a number in [0, 1], or 'otsu').

    `factors` None means the model's finest of (1, 2), chosen when the annotator is prepared for
    a model (`prepare_annotator`): SD's 64 and 32 pixel maps, the toy model's 16 pixel ones.
    """

    factors: tuple[int, ...] | None = None
    threshold: float | str = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.threshold, str) and self.threshold not in THRESHOLDS:
            raise ValueError(f"threshold={self.threshold!r}: use a number in [0, 1] or one of {THRESHOLDS}")
        LabelRule(self.threshold)  # checks the number
        if self.factors is not None and not self.factors:
            raise ValueError("factors is empty: name at least one captured factor, e.g. (1, 2), or leave it out")


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map over its last two dims to [0, 1]."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-8)


def object_maps(
    maps: dict[int, torch.Tensor], factors: Sequence[int], groups: Sequence[Sequence[int]], size: tuple[int, int]
) -> torch.Tensor:
    """(K, H, W) normalised map of each object: the sum of its tokens' attention in each factor's (1, h, w, L)
    map, resized to `size`, averaged over `factors`, then min-max normalised.

    Tokens are summed at the captured grid, before resizing: resizing is linear, so this equals resizing every
    token's map first, with K maps resized instead of L (a handful of objects instead of 77 tokens; at 512 px
    that was about 240 MB per image)."""
    missing = [f for f in factors if f not in maps]
    if missing:
        raise ValueError(f"factors {missing} were not captured (captured: {sorted(maps)}); capture them or drop them")
    if not groups:
        return torch.zeros((0, *size))
    resized = []
    for f in factors:
        tokens = maps[f][0]  # (h, w, L)
        grouped = torch.stack([tokens[..., list(g)].sum(-1) for g in groups])  # (K, h, w)
        resized.append(F.interpolate(grouped[None], size=size, mode="bilinear", align_corners=False)[0])
    return normalise(torch.stack(resized).mean(0))


def image_object_maps(
    captured: CapturedAttention,
    index: int,
    factors: Sequence[int],
    groups: Sequence[Sequence[int]],
    size: tuple[int, int],
) -> torch.Tensor:
    """(K, H, W) normalised cross-attention maps of each object of image `index` of a captured batch, read at
    `factors` and resized to `size` (what every annotator starts from)."""
    cross = {f: m[index : index + 1] for f, m in captured.cross_maps().items()}
    return object_maps(cross, factors, groups, size)


class CrossAttentionAnnotator:
    """DiffuMask-style masks from captured cross-attention; parameters in CrossAttentionParams."""

    name = "cross_attention"
    by_object = False

    def __init__(self, params: CrossAttentionParams | None = None) -> None:
        self.params = params or CrossAttentionParams()

    @property
    def capture(self) -> CaptureSpec:
        if self.params.factors is None:
            raise RuntimeError("factors are chosen per model: call prepare_annotator(annotator, model=model) first")
        return CaptureSpec(cross_factors=tuple(sorted(set(self.params.factors))))

    @property
    def rule(self) -> LabelRule:
        return LabelRule(self.params.threshold)

    def prepare_for(self, unet) -> None:
        """Pick the default factors (the UNet's finest of 1 and 2) if none were given."""
        if self.params.factors is None:
            self.params = replace(self.params, factors=default_cross_factors(unet))

    def maps(
        self,
        captured: CapturedAttention,
        index: int,
        groups: Sequence[Sequence[int]],
        size: tuple[int, int],
        class_ids: Sequence[int] | None = None,
    ) -> ObjectMaps:
        """(K, H, W) object maps in [0, 1] of image `index` of a captured batch."""
        assert self.params.factors is not None, "call prepare_annotator(annotator, model=model) first"
        return ObjectMaps(image_object_maps(captured, index, self.params.factors, groups, size))

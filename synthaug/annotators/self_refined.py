"""Self-attention-refined annotation (Dataset Diffusion).

Each object's cross-attention map (summed over its words, at a coarse factor) is resized to
the self-attention resolution and propagated by the self-attention affinity raised to a
power: ``A^power @ cross``. Self-attention links pixels of the same object, so the
propagated maps fill objects and sharpen their edges. After min-max normalisation a pixel
gets the class of its strongest object where that map is at least ``label_threshold``
(0.6), is set to ignore (255) where it lies in ``[ignore_threshold, label_threshold)``
(0.5-0.6, uncertain), and is background below.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synthaug.annotators.base import ObjectMaps
from synthaug.annotators.cross_attention import image_object_maps, normalise
from synthaug.annotators.labels import LabelRule
from synthaug.attention import CapturedAttention, CaptureSpec


@dataclass(frozen=True)
class SelfRefinedParams:
    """Cross factors to start from, the self-attention factor, the affinity power and the two thresholds.

    The defaults are Dataset Diffusion's SD setting: cross-attention at 16x16 and self-attention at
    32x32 of a 64x64 latent (factors 4 and 2). On the 32-pixel toy model use cross factor 2, self 2.
    """

    cross_factors: tuple[int, ...] = (4,)
    self_factor: int = 2
    power: int = 4
    label_threshold: float = 0.6
    ignore_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.power < 1:
            raise ValueError(f"power={self.power} must be >= 1")
        if not 0.0 <= self.ignore_threshold <= self.label_threshold <= 1.0:
            raise ValueError(
                f"need 0 <= ignore_threshold ({self.ignore_threshold}) <= label_threshold ({self.label_threshold}) <= 1"
            )
        if not self.cross_factors:
            raise ValueError("cross_factors is empty: name at least one captured factor")


def refine_with_affinity(maps: torch.Tensor, affinity: torch.Tensor, power: int) -> torch.Tensor:
    """Propagate (K, h, w) maps by the (h*w, h*w) row-stochastic affinity raised to `power`; normalised."""
    k, h, w = maps.shape
    if affinity.shape != (h * w, h * w):
        raise ValueError(f"affinity {tuple(affinity.shape)} does not fit maps of {h}x{w}")
    flat = maps.reshape(k, h * w).T  # (N, K)
    for _ in range(power):  # A^p @ x without forming A^p: p matrix-vector products
        flat = affinity @ flat
    return normalise(flat.T.reshape(k, h, w))


def self_refined_maps(
    captured: CapturedAttention,
    index: int,
    groups: Sequence[Sequence[int]],
    params: SelfRefinedParams,
    size: tuple[int, int],
) -> torch.Tensor:
    """(K, H, W) refined object maps for image `index` of a captured batch."""
    self_maps = captured.self_maps()
    if params.self_factor not in self_maps:
        raise ValueError(f"self-attention factor {params.self_factor} was not captured (captured: {sorted(self_maps)})")
    grid = captured.grid(params.self_factor)
    obj = image_object_maps(captured, index, params.cross_factors, groups, grid)
    refined = refine_with_affinity(obj, self_maps[params.self_factor][index].to(obj.dtype), params.power)
    return normalise(F.interpolate(refined[None], size=size, mode="bilinear", align_corners=False)[0])


class SelfRefinedAnnotator:
    """Dataset Diffusion masks: cross-attention propagated by self-attention, uncertain pixels ignored."""

    name = "self_refined"
    by_object = False

    def __init__(self, params: SelfRefinedParams | None = None) -> None:
        self.params = params or SelfRefinedParams()

    @property
    def capture(self) -> CaptureSpec:
        return CaptureSpec(
            cross_factors=tuple(sorted(set(self.params.cross_factors))), self_factors=(self.params.self_factor,)
        )

    def maps(
        self,
        captured: CapturedAttention,
        index: int,
        groups: Sequence[Sequence[int]],
        size: tuple[int, int],
        class_ids: Sequence[int] | None = None,
    ) -> ObjectMaps:
        return ObjectMaps(self_refined_maps(captured, index, groups, self.params, size))

    @property
    def rule(self) -> LabelRule:
        """Label at >= label_threshold; ignore (255) in [ignore_threshold, label_threshold)."""
        return LabelRule(self.params.label_threshold, ignore_from=self.params.ignore_threshold)

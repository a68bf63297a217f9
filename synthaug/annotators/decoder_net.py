"""The learned annotator's network (DatasetDM): an FPN head on the UNet's up-block features and the class
words' attention, with semantic and centre/offset instance heads, and what turns its outputs into masks.

Why an FPN-style head and not DatasetDM's query decoder: with 20-100 labelled images, a
query decoder has to learn Hungarian-matched object queries from very few examples, which
converges slowly and trains for hours; a per-pixel FPN head trains in minutes on a CPU and
already has what the queries would add, since the class-word attention maps tell it which
prompted class is where. Centre-and-offset instances need no matching either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from synthaug.annotators.cross_attention import object_maps
from synthaug.attention import CaptureSpec

#: Logit given to classes a prompt does not name (finite, so that softmax and CE stay NaN-free).
EXCLUDED_LOGIT = -1e4


@dataclass(frozen=True)
class DecoderConfig:
    """What a decoder reads and predicts; saved with its weights."""

    feature_factors: tuple[int, ...]
    feature_channels: tuple[int, ...]
    attention_factors: tuple[int, ...]
    class_names: tuple[str, ...]
    background_id: int
    timestep: int
    width: int = 64
    instances: bool = True

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def capture(self) -> CaptureSpec:
        """Features and cross-attention at `timestep`'s step, and cross-attention over all steps."""
        return CaptureSpec(cross_factors=self.attention_factors, features=self.feature_factors, timestep=self.timestep)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecoderConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class PerceptionDecoder(nn.Module):
    """FPN over the UNet's up-block features; class attention joins at the finest level; per-pixel heads."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.width
        # GroupNorm(1, C) first: UNet features differ in scale by orders of magnitude between blocks.
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(1, c), nn.Conv2d(c, w, 1)) for c in cfg.feature_channels
        )
        self.smooth = nn.ModuleList(
            nn.Sequential(nn.Conv2d(w, w, 3, padding=1), _norm(w), nn.SiLU()) for _ in cfg.feature_channels
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(w + cfg.num_classes, w, 3, padding=1),
            _norm(w),
            nn.SiLU(),
            nn.Conv2d(w, w, 3, padding=1),
            _norm(w),
            nn.SiLU(),
        )
        self.semantic = nn.Conv2d(w, cfg.num_classes, 1)
        self.center = nn.Conv2d(w, 1, 1) if cfg.instances else None
        self.offset = nn.Conv2d(w, 2, 1) if cfg.instances else None

    def forward(self, features: Sequence[torch.Tensor], attention: torch.Tensor) -> dict[str, torch.Tensor]:
        """`features` in cfg.feature_factors order; `attention` (B, num_classes, H0, W0) at the finest size."""
        order = sorted(range(len(features)), key=lambda i: -self.cfg.feature_factors[i])  # coarse to fine
        x = None
        for i in order:
            lat = self.lateral[i](features[i].float())
            if x is not None:
                lat = lat + F.interpolate(x, size=lat.shape[-2:], mode="bilinear", align_corners=False)
            x = self.smooth[i](lat)
        assert x is not None
        if attention.shape[-2:] != x.shape[-2:]:
            attention = F.interpolate(attention, size=x.shape[-2:], mode="bilinear", align_corners=False)
        x = self.fuse(torch.cat([x, attention.float()], 1))
        out = {"semantic": self.semantic(x)}
        if self.center is not None and self.offset is not None:
            out["center"] = self.center(x)
            out["offset"] = self.offset(x)
        return out


def restrict_logits(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Logits (B, C, H, W) with the classes not in `allowed` (B, C) bool pushed to EXCLUDED_LOGIT."""
    return logits.masked_fill(~allowed[:, :, None, None], EXCLUDED_LOGIT)


def allowed_classes(class_ids: Sequence[int], num_classes: int, background_id: int) -> torch.Tensor:
    """(num_classes,) bool: background and the prompted classes."""
    allowed = torch.zeros(num_classes, dtype=torch.bool)
    allowed[background_id] = True
    for c in class_ids:
        allowed[int(c)] = True
    return allowed


def class_attention(
    cross: dict[int, torch.Tensor],
    factors: Sequence[int],
    groups: Sequence[Sequence[int]],
    class_ids: Sequence[int],
    num_classes: int,
    size: tuple[int, int],
) -> torch.Tensor:
    """Per-class attention channels (num_classes, H, W) from one image's cross maps.

    `cross` is {factor: (1, h, w, L)}; each object's map is its words' attention, min-max
    normalised; a class channel is the maximum over that class's objects (zero if unprompted).
    """
    objects = object_maps(cross, factors, groups, size)
    channels = objects.new_zeros((num_classes, *size))
    for k, c in enumerate(class_ids):
        channels[int(c)] = torch.maximum(channels[int(c)], objects[k])
    return channels


def predict(
    net: PerceptionDecoder, features: Sequence[torch.Tensor], attention: torch.Tensor, allowed: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Forward pass with the classes restricted: 'probs' (B, C, H0, W0) plus the instance heads' outputs."""
    out = net(features, attention)
    out["probs"] = restrict_logits(out["semantic"], allowed).softmax(1)
    return out


def decode_instances(
    semantic: torch.Tensor, center: torch.Tensor, offset: torch.Tensor, background_id: int, threshold: float
) -> torch.Tensor:
    """Instance ids (H0, W0), -1 = background or no centre found.

    A connected foreground region with one centre peak (above `threshold`) is one instance;
    with several, each of its pixels joins the peak nearest to where its offset points
    (Panoptic-DeepLab grouping). A region with no peak gets no id: stray fragments of the
    foreground must not split the objects they touch.
    """
    from scipy import ndimage

    H, W = semantic.shape
    fg = (semantic != background_id).cpu().numpy()
    regions, n = ndimage.label(fg, structure=np.ones((3, 3), bool))
    ids = torch.full((H, W), -1, dtype=torch.long)
    if n == 0:
        return ids
    heat = center[0]
    # Peaks closer than about an eighth of the side are one object (Panoptic-DeepLab's NMS window).
    k = max(3, (H // 8) | 1)
    peaks = ((heat == F.max_pool2d(heat[None, None], k, 1, k // 2)[0, 0]) & (heat > threshold)).cpu().numpy() & fg
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    next_id = 0
    for r in range(1, n + 1):
        region = torch.from_numpy(regions == r)
        py, px = np.nonzero(peaks & (regions == r))
        if len(py) <= 1:
            if len(py) == 1:
                ids[region] = next_id
                next_id += 1
            continue
        ty = yy[region].float() + offset[0][region] * H
        tx = xx[region].float() + offset[1][region] * W
        d = (ty[:, None] - torch.from_numpy(py)[None].float()) ** 2 + (
            tx[:, None] - torch.from_numpy(px)[None].float()
        ) ** 2
        ids[region] = next_id + d.argmin(1)
        next_id += len(py)
    return ids

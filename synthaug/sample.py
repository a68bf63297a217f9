"""Sample: one generated (or real) training example, framework-free."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthaug import rle
from synthaug.vocabulary import IGNORE_INDEX


@dataclass
class Instance:
    """One object: its class id, its mask as COCO RLE, its box [x, y, w, h], and an optional score."""

    class_id: int
    rle: rle.RLE
    bbox: list[float]
    area: int
    score: float | None = None

    @classmethod
    def from_mask(cls, class_id: int, mask: np.ndarray, score: float | None = None) -> Instance:
        return cls(int(class_id), rle.encode(mask), rle.bbox(mask), int(mask.sum()), score)

    def mask(self) -> np.ndarray:
        return rle.decode(self.rle)

    def to_dict(self) -> dict[str, Any]:
        out = {"class_id": self.class_id, "rle": self.rle, "bbox": self.bbox, "area": self.area}
        if self.score is not None:
            out["score"] = self.score
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Instance:
        return cls(int(d["class_id"]), d["rle"], list(d["bbox"]), int(d["area"]), d.get("score"))


@dataclass
class Sample:
    """Image (H, W, 3) uint8, semantic mask (H, W) uint8 with 255 = ignore, instances, and metadata."""

    image: np.ndarray
    mask: np.ndarray
    instances: list[Instance] = field(default_factory=list)
    prompt: str = ""
    seed: int | None = None
    quality: dict[str, float] = field(default_factory=dict)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"Sample.image must be (H, W, 3) uint8, got {self.image.shape} {self.image.dtype}")
        if self.mask.shape != self.image.shape[:2] or self.mask.dtype != np.uint8:
            raise ValueError(
                f"Sample.mask must be (H, W) uint8 matching the image {self.image.shape[:2]}, "
                f"got {self.mask.shape} {self.mask.dtype}"
            )

    def relabelled(self, lut: np.ndarray) -> Sample:
        """This sample with class ids looked up in `lut` (256 entries; 255 = ignore): mask and instances alike,
        instances of an ignored class dropped. Image and metadata are shared, not copied."""
        instances = [
            Instance(int(lut[i.class_id]), i.rle, i.bbox, i.area, i.score)
            for i in self.instances
            if lut[i.class_id] != IGNORE_INDEX
        ]
        return Sample(
            self.image, lut[self.mask], instances, self.prompt, self.seed, self.quality, self.fingerprint, self.id
        )

    @property
    def classes_present(self) -> list[int]:
        """Class ids that occur in the mask (ignore excluded)."""
        return [int(c) for c in np.unique(self.mask) if c != IGNORE_INDEX]

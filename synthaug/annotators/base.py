"""What every annotator returns, and the one loop that turns captured attention into an Annotation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from synthaug.attention import AttentionStore, CaptureSpec


@dataclass
class Annotation:
    """Semantic mask (H, W) uint8 with 255 = ignore, winning object per pixel (-1 none), confidence in [0, 1].

    `by_object` says that `winner` separates objects of one class (so instances come from it),
    rather than only ranking the prompt's attention maps; `instance_ids` (H, W), -1 = none, is a
    learned instance split that further divides them.
    """

    mask: np.ndarray
    winner: np.ndarray
    confidence: np.ndarray
    by_object: bool = False
    instance_ids: np.ndarray | None = None


class Annotator(Protocol):
    """Turns captured attention of one image into object maps, and object maps into an Annotation."""

    name: str

    @property
    def capture(self) -> CaptureSpec: ...

    def maps(
        self,
        store: AttentionStore,
        index: int,
        groups: Sequence[Sequence[int]],
        size: tuple[int, int],
        class_ids: Sequence[int] | None = None,
    ) -> torch.Tensor: ...

    def label(self, maps: torch.Tensor, class_ids: Sequence[int]) -> Annotation: ...

"""What annotators return: object maps (ObjectMaps) and, after labelling, an Annotation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from synthaug.attention import CapturedAttention, CaptureSpec

if TYPE_CHECKING:
    from synthaug.annotators.labels import LabelRule


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


@dataclass
class ObjectMaps:
    """What an annotator reads off one image: (K, H, W) object maps in [0, 1], and optionally a learned
    instance split (H, W), -1 = none, that divides objects a word covers twice."""

    maps: torch.Tensor
    instance_ids: np.ndarray | None = None


class Annotator(Protocol):
    """Turns the captured attention of one image into object maps; `rule` says how maps become a label
    (synthaug.annotators.labels), and `by_object` whether the winning map separates objects of one class."""

    name: str
    by_object: bool

    @property
    def capture(self) -> CaptureSpec: ...

    @property
    def rule(self) -> LabelRule: ...

    def maps(
        self,
        captured: CapturedAttention,
        index: int,
        groups: Sequence[Sequence[int]],
        size: tuple[int, int],
        class_ids: Sequence[int] | None = None,
    ) -> ObjectMaps: ...

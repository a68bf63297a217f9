"""Segmentation metrics shared by the toy evaluation, decoder training and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from synthaug.vocabulary import IGNORE_INDEX


@dataclass
class IoUAccumulator:
    """Per-class intersections and unions over many images (dataset mIoU), and what the prediction left ignore.

    Truth pixels that are ignore (255) are left out. A predicted ignore pixel is counted twice over:
    left out of `miou()` (the figure over the pixels the annotator committed to) and counted as wrong
    in `miou_ignore_wrong()` (a miss for its true class), so that an annotator cannot score well by
    declining the hard pixels; `ignore_share()` says how many it declined.
    """

    num_classes: int
    inter: np.ndarray = field(init=False)
    union: np.ndarray = field(init=False)
    union_ignore_wrong: np.ndarray = field(init=False)
    ignored: int = field(init=False, default=0)
    judged: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.inter = np.zeros(self.num_classes, dtype=np.int64)
        self.union = np.zeros(self.num_classes, dtype=np.int64)
        self.union_ignore_wrong = np.zeros(self.num_classes, dtype=np.int64)

    def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
        """Add one image's prediction and truth (both (H, W), 255 = ignore)."""
        if pred.shape != truth.shape:
            raise ValueError(f"pred {pred.shape} and truth {truth.shape} differ in size: resize the prediction first")
        known = truth != IGNORE_INDEX
        committed = known & (pred != IGNORE_INDEX)
        declined = known & (pred == IGNORE_INDEX)
        self.judged += int(known.sum())
        self.ignored += int(declined.sum())
        for c in range(self.num_classes):
            p, t = (pred == c) & committed, (truth == c) & committed
            self.inter[c] += int((p & t).sum())
            self.union[c] += int((p | t).sum())
            self.union_ignore_wrong[c] += int((p | t).sum() + ((truth == c) & declined).sum())

    @staticmethod
    def _ratio(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, inter / np.maximum(union, 1), np.nan)

    def per_class(self) -> np.ndarray:
        """IoU per class over committed pixels (nan for a class absent from both)."""
        return self._ratio(self.inter, self.union)

    def miou(self) -> float:
        """Mean IoU over the pixels the prediction committed to (predicted ignore left out)."""
        return float(np.nanmean(self.per_class()))

    def miou_ignore_wrong(self) -> float:
        """Mean IoU with every predicted ignore pixel counted as a miss of its true class."""
        return float(np.nanmean(self._ratio(self.inter, self.union_ignore_wrong)))

    def ignore_share(self) -> float:
        """Share of the truth's labelled pixels that the prediction left ignore."""
        return self.ignored / self.judged if self.judged else 0.0

"""The annotation pipeline: captured attention of one image -> maps -> refine -> label -> instances -> quality.

Every caller (the generator, the toy evaluation, the benchmarks) runs annotators through this one
object, so the order of the stages, and the background and class ids (from the vocabulary), are
the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthaug.annotators.base import Annotation, Annotator
from synthaug.annotators.instances import annotation_instances, quality_figures
from synthaug.annotators.labels import label_maps
from synthaug.annotators.refine import REFINERS, refine
from synthaug.attention import CapturedAttention
from synthaug.sample import Instance
from synthaug.vocabulary import ClassVocabulary


@dataclass
class Annotated:
    """One image's annotation, its instances and its quality figures."""

    annotation: Annotation
    instances: list[Instance]
    quality: dict[str, float]

    @property
    def mask(self) -> np.ndarray:
        return self.annotation.mask


@dataclass
class AnnotationPipeline:
    """An annotator, a refinement and the instance rule, bound to a vocabulary (its background id)."""

    annotator: Annotator
    vocabulary: ClassVocabulary
    refine: str = "none"
    refine_params: dict[str, Any] = field(default_factory=dict)
    min_instance_area: float = 0.002

    def __post_init__(self) -> None:
        if self.refine not in REFINERS:
            raise ValueError(f"refine={self.refine!r}: use one of {REFINERS}")
        self.refine_params = dict(self.refine_params or {})
        voc = self.vocabulary
        self.background_id = None if voc.background is None else voc.id_of(voc.background)

    def __call__(
        self,
        captured: CapturedAttention,
        index: int,
        image: np.ndarray,
        groups: Sequence[Sequence[int]],
        class_ids: Sequence[int],
    ) -> Annotated:
        """Annotate image `index` of a captured batch, whose objects have token `groups` and `class_ids`."""
        found = self.annotator.maps(captured, index, groups, image.shape[:2], class_ids)
        maps = refine(found.maps, image, self.refine, **self.refine_params)
        ann = label_maps(
            maps, class_ids, self.background_id, self.annotator.rule, self.annotator.by_object, found.instance_ids
        )
        return self.finish(ann, len(class_ids))

    def finish(self, ann: Annotation, num_targets: int, extra_quality: dict[str, float] | None = None) -> Annotated:
        """An annotation's instances and quality figures (with `extra_quality`), by this pipeline's rules."""
        quality = quality_figures(ann, num_targets, self.min_instance_area, self.background_id)
        return Annotated(
            ann,
            annotation_instances(ann, self.min_instance_area, self.background_id),
            {**quality, **(extra_quality or {})},
        )

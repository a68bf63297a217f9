"""Score generated toy images: read each prompted object's mask off its colour.

The prompt names each object's colour and shape, and toy backgrounds are neutral grey, so
the pixels near a prompted colour are that object. This gives exact-enough ground truth for
*generated* images, against which annotator masks are scored (IoU) and the model itself is
judged (fidelity: does each prompted object appear, compact, in its colour and shape).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from synthaug.annotators.instances import area_limit, components
from synthaug.toy.world import COLOURS, SHAPES, TOY_VOCABULARY

#: A pixel is an object's colour when within this RGB distance of it (and nearer than to the others).
COLOUR_RADIUS = 95.0
#: ...and at least this saturated (max - min channel), so grey background never counts.
MIN_SATURATION = 60
#: An object "appears" when its largest compact part covers this share of the image...
MIN_AREA_SHARE = 0.015
#: ...and holds this share of all pixels of its colour.
MIN_COMPACTNESS = 0.6


@dataclass(frozen=True)
class PromptedObject:
    """What the prompt asked for: a colour word and a shape word."""

    colour: str
    shape: str


def colour_truth(image: np.ndarray, objects: Sequence[PromptedObject]) -> np.ndarray:
    """(N, H, W) bool: for each prompted object, the pixels of its colour in `image` (H, W, 3 uint8)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) uint8, got shape {image.shape}")
    img = image.astype(np.float32)
    sat = img.max(axis=2) - img.min(axis=2)
    refs = np.array([COLOURS[o.colour] for o in objects], dtype=np.float32).reshape(-1, 1, 1, 3)
    dist = np.linalg.norm(img[None] - refs, axis=3)  # (N, H, W)
    nearest = dist.argmin(axis=0) if len(objects) else np.zeros(image.shape[:2], dtype=np.int64)
    out = np.zeros((len(objects), *image.shape[:2]), dtype=bool)
    for i in range(len(objects)):
        out[i] = (dist[i] <= COLOUR_RADIUS) & (nearest == i) & (sat >= MIN_SATURATION)
    return out


def semantic_truth(image: np.ndarray, objects: Sequence[PromptedObject]) -> np.ndarray:
    """(H, W) uint8 semantic mask read off the colours: each object's pixels get its shape's class id."""
    truth = colour_truth(image, objects)
    sem = np.zeros(image.shape[:2], dtype=np.uint8)
    for obj, m in zip(objects, truth):
        sem[m] = TOY_VOCABULARY.id_of(obj.shape)
    return sem


def ideal_shapes(height: int, width: int) -> dict[str, np.ndarray]:
    """Each toy shape drawn to fill a (height, width) box exactly, sampled at pixel centres."""
    y = (np.arange(height) + 0.5)[:, None]
    x = (np.arange(width) + 0.5)[None, :]
    cx, cy, rx, ry = width / 2, height / 2, width / 2, height / 2
    rel = y / height  # 0 at the apex, 1 at the base
    return {
        "circle": ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1.0,
        "square": np.ones((height, width), dtype=bool),
        "triangle": np.abs(x - cx) <= rx * rel + 0.5,  # half a pixel: rasterised edges round outwards
    }


def classify_shape(mask: np.ndarray) -> str | None:
    """The toy shape whose ideal outline, fitted to the mask's bounding box, overlaps it best."""
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return None
    crop = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    ious = {shape: _iou(ideal, crop) for shape, ideal in ideal_shapes(*crop.shape).items()}
    return max(ious, key=ious.get)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else float("nan")


@dataclass
class ObjectCheck:
    """Whether one prompted object appears: in its colour (compact, big enough) and in its shape."""

    obj: PromptedObject
    area_share: float
    compactness: float
    shape_seen: str | None

    @property
    def colour_ok(self) -> bool:
        return self.area_share >= MIN_AREA_SHARE and self.compactness >= MIN_COMPACTNESS

    @property
    def ok(self) -> bool:
        return self.colour_ok and self.shape_seen == self.obj.shape


def check_objects(image: np.ndarray, objects: Sequence[PromptedObject]) -> list[ObjectCheck]:
    """Fidelity checks of each prompted object in a generated image."""
    checks = []
    for obj, m in zip(objects, colour_truth(image, objects)):
        labels, n = ndimage.label(m)
        if n == 0:
            checks.append(ObjectCheck(obj, 0.0, 0.0, None))
            continue
        sizes = np.bincount(labels.ravel())[1:]
        biggest = labels == (int(sizes.argmax()) + 1)
        checks.append(
            ObjectCheck(obj, float(sizes.max() / m.size), float(sizes.max() / m.sum()), classify_shape(biggest))
        )
    return checks


def object_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """IoU of one predicted object mask against its colour truth (both (H, W) bool)."""
    return _iou(pred.astype(bool), truth.astype(bool))


def parse_caption(caption: str) -> list[PromptedObject]:
    """The objects a toy caption names, e.g. 'a red circle and a blue square on stripes'."""
    words = caption.replace(",", " ").split()
    found = []
    for i in range(1, len(words)):
        if words[i] in SHAPES and words[i - 1] in COLOURS:
            found.append(PromptedObject(words[i - 1], words[i]))
    return found


def drawn_instances(image: np.ndarray, objects: Sequence[PromptedObject], min_area: float = 0.01) -> int:
    """How many objects were drawn: 8-connected components of at least `min_area` of the image in
    each prompted object's colour mask."""
    limit = area_limit(min_area, image.shape[0] * image.shape[1])
    return sum(1 for m in colour_truth(image, objects) for _ in components(m, limit))

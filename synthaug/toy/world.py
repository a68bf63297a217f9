"""The shapes world: scenes of coloured circles, squares and triangles with exact masks.

A scene is sampled from a seed in normalised coordinates and can be drawn at any size.
Pixels are drawn without anti-aliasing, so the masks match the pixels exactly. Objects keep
at least ``MIN_VISIBLE`` of their area when others overlap them. Backgrounds are neutral
grey (plain, noise, gradient, stripes), so an object's colour identifies it in any image.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from synthaug.sample import Instance, Sample
from synthaug.vocabulary import ClassVocabulary

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 225),
    "yellow": (235, 210, 40),
    "purple": (160, 60, 200),
}
BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "gradient", "stripes")
MIN_VISIBLE = 0.7
MIN_HALF_SIZE, MAX_HALF_SIZE = 0.14, 0.26

#: Semantic classes of the toy world: the class of an object is its shape.
TOY_VOCABULARY = ClassVocabulary(
    names=("background", *SHAPES),
    palette=((0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200)),
)


@dataclass(frozen=True)
class ToyObject:
    """One shape: centre and half-size in [0, 1] image units; drawn upright and axis-aligned."""

    shape: str
    colour: str
    cx: float
    cy: float
    half: float
    tint: int = 0  # brightness jitter added to the colour, in grey levels

    @property
    def rgb(self) -> tuple[int, int, int]:
        return tuple(int(np.clip(v + self.tint, 0, 255)) for v in COLOURS[self.colour])  # type: ignore[return-value]

    @property
    def class_id(self) -> int:
        return TOY_VOCABULARY.id_of(self.shape)


@dataclass(frozen=True)
class ToyScene:
    """Objects (drawn in order, later on top), a background kind and its parameters, and the seed."""

    objects: tuple[ToyObject, ...]
    background: str
    bg_levels: tuple[int, int]
    bg_param: float
    seed: int

    @property
    def caption(self) -> str:
        return caption_for(self.objects, self.background)

    def to_dict(self) -> dict:
        return asdict(self)


def caption_for(objects: tuple[ToyObject, ...] | list[tuple[str, str]], background: str | None) -> str:
    """'a red circle and a blue square on stripes': objects as ToyObjects or (colour, shape) pairs."""
    pairs = [(o.colour, o.shape) if isinstance(o, ToyObject) else tuple(o) for o in objects]
    text = " and ".join(f"a {colour} {shape}" for colour, shape in pairs)
    return f"{text} on {background}" if background else text


def shape_mask(shape: str, cx: float, cy: float, half: float, size: int) -> np.ndarray:
    """Boolean (size, size) mask of one shape, evaluated at pixel centres."""
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    x = coords[None, :]
    y = coords[:, None]
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    if shape == "square":
        return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    if shape == "triangle":  # apex up, base at the bottom, as wide as it is tall
        top = cy - half
        rel = (y - top) / (2 * half)  # 0 at the apex, 1 at the base
        return (rel >= 0) & (rel <= 1) & (np.abs(x - cx) <= half * rel)
    raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPES)}")


def _visible_shares(objects: list[ToyObject], size: int = 48) -> list[float]:
    covered = np.zeros((size, size), dtype=bool)
    shares = []
    for obj in reversed(objects):  # topmost first
        m = shape_mask(obj.shape, obj.cx, obj.cy, obj.half, size)
        area = m.sum()
        shares.append(float((m & ~covered).sum() / max(area, 1)))
        covered |= m
    return shares[::-1]


def sample_scene(
    seed: int,
    min_objects: int = 1,
    max_objects: int = 3,
    shapes: tuple[str, ...] = SHAPES,
    colours: tuple[str, ...] = tuple(COLOURS),
    backgrounds: tuple[str, ...] = BACKGROUNDS,
) -> ToyScene:
    """Draw a random scene from `seed`: 1-3 objects of distinct colours on a grey background."""
    if not 1 <= min_objects <= max_objects <= len(colours):
        raise ValueError(f"need 1 <= min_objects <= max_objects <= {len(colours)} (one colour per object)")
    rng = np.random.default_rng(seed)
    n = int(rng.integers(min_objects, max_objects + 1))
    picked_colours = rng.choice(len(colours), size=n, replace=False)
    objects: list[ToyObject] = []
    for i in range(n):
        shape = shapes[int(rng.integers(len(shapes)))]
        for _attempt in range(50):
            half = float(rng.uniform(MIN_HALF_SIZE, MAX_HALF_SIZE * (1.0 if n == 1 else 0.85)))
            cx, cy = (float(v) for v in rng.uniform(half, 1 - half, size=2))
            cand = ToyObject(shape, colours[int(picked_colours[i])], cx, cy, half, int(rng.integers(-15, 16)))
            if min(_visible_shares([*objects, cand])) >= MIN_VISIBLE:
                break
        else:  # crowded: keep fewer objects rather than hide one
            break
        objects.append(cand)
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    lo, hi = sorted(int(v) for v in rng.integers(30, 200, size=2))
    if hi - lo < 40:
        hi = min(lo + 40 + int(rng.integers(0, 30)), 225)
    bg_param = float(rng.uniform(0.0, 1.0))
    return ToyScene(tuple(objects), background, (lo, hi), bg_param, seed)


def _background(scene: ToyScene, size: int, rng: np.random.Generator) -> np.ndarray:
    lo, hi = scene.bg_levels
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    x, y = np.meshgrid(coords, coords)
    kind = scene.background
    if kind == "plain":
        grey = np.full((size, size), (lo + hi) / 2)
    elif kind == "noise":
        grey = (lo + hi) / 2 + rng.normal(0.0, 14.0, size=(size, size))
    elif kind == "gradient":
        angle = scene.bg_param * 2 * np.pi
        t = (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle)
        grey = lo + (hi - lo) * (t - t.min()) / max(t.max() - t.min(), 1e-9)
    elif kind == "stripes":
        period = 0.16 + 0.12 * scene.bg_param  # in image units: 5-9 px at 32 px
        direction = x if scene.bg_param < 0.5 else y
        grey = np.where((direction / period) % 1.0 < 0.5, lo, hi).astype(np.float64)
    else:
        raise ValueError(f"unknown background {kind!r}; known: {list(BACKGROUNDS)}")
    grey = np.clip(np.round(grey), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2)


@dataclass
class Rendering:
    """A drawn scene: image (H,W,3) uint8, semantic mask (H,W) uint8, instance masks (N,H,W) bool."""

    image: np.ndarray
    semantic: np.ndarray
    instances: np.ndarray
    scene: ToyScene

    @property
    def instance_classes(self) -> list[int]:
        return [o.class_id for o in self.scene.objects]

    def to_sample(self) -> Sample:
        """The rendering as a Sample: exact mask and instances, the caption as prompt, the scene seed."""
        instances = [Instance.from_mask(c, m) for c, m in zip(self.instance_classes, self.instances) if m.any()]
        return Sample(
            self.image,
            self.semantic,
            instances,
            self.scene.caption,
            self.scene.seed,
            fingerprint={"model": "toy-renderer"},
        )


def render(scene: ToyScene, size: int = 32) -> Rendering:
    """Draw `scene` at `size` x `size`; same scene and size give the same pixels."""
    rng = np.random.default_rng([scene.seed, size])
    image = _background(scene, size, rng)
    semantic = np.zeros((size, size), dtype=np.uint8)
    instances = np.zeros((len(scene.objects), size, size), dtype=bool)
    for i, obj in enumerate(scene.objects):
        m = shape_mask(obj.shape, obj.cx, obj.cy, obj.half, size)
        image[m] = obj.rgb
        semantic[m] = obj.class_id
        instances[:i, m] = False
        instances[i] = m
    return Rendering(image, semantic, instances, scene)


def render_seed(seed: int, size: int = 32, **scene_kwargs) -> Rendering:
    """Sample and draw the scene of `seed`."""
    return render(sample_scene(seed, **scene_kwargs), size)

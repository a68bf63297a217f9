"""Splice and blur augmentations for Samples: parameters are drawn once, then applied to image, mask and instances.

Every augmentation has a pure functional twin on numpy arrays (``splice_grid``, ``paste_objects``,
``gaussian_blur``, ``motion_blur``, ``edge_blur``), and a small class holding its probability and
parameter ranges whose ``sample(rng)`` draws one set of parameters. The mix dataset applies them to
synthetic samples by default (DiffuMask's splice and blur); pasting synthetic objects onto real
images is X-Paste's recipe. Ignore pixels (255) stay ignore; blur never touches the mask.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

from synthaug.sample import Instance, Sample

# ---------------------------------------------------------------------------------------------- functional twins


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """A label mask (H, W) uint8 at (height, width), nearest neighbour: class ids stay class ids."""
    if mask.shape == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))


def resize_sample(sample: Sample, height: int, width: int) -> Sample:
    """The sample at (height, width): image bilinear, mask and instance masks nearest."""
    if sample.mask.shape == (height, width):
        return sample
    image = np.asarray(Image.fromarray(sample.image).resize((width, height), Image.BILINEAR))
    mask = resize_mask(sample.mask, height, width)
    instances = []
    for inst in sample.instances:
        m = np.asarray(Image.fromarray(inst.mask().astype(np.uint8)).resize((width, height), Image.NEAREST)) > 0
        if m.any():
            instances.append(Instance.from_mask(inst.class_id, m, inst.score))
    return dataclasses.replace(sample, image=image, mask=mask, instances=instances)


def splice_grid(tiles: Sequence[Sample], rows: int, cols: int, height: int, width: int) -> Sample:
    """A rows x cols grid of `tiles` (row-major) filling (height, width); instances follow their tile."""
    if len(tiles) != rows * cols:
        raise ValueError(f"a {rows}x{cols} grid needs {rows * cols} tiles, got {len(tiles)}")
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    image = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), np.uint8)
    instances = []
    for t, tile in enumerate(tiles):
        r, c = divmod(t, cols)
        y0, y1, x0, x1 = ys[r], ys[r + 1], xs[c], xs[c + 1]
        small = resize_sample(tile, y1 - y0, x1 - x0)
        image[y0:y1, x0:x1] = small.image
        mask[y0:y1, x0:x1] = small.mask
        for inst in small.instances:
            full = np.zeros((height, width), bool)
            full[y0:y1, x0:x1] = inst.mask()
            instances.append(Instance.from_mask(inst.class_id, full, inst.score))
    first = tiles[0]
    meta = {"splice": f"{rows}x{cols}", "tiles": [t.id for t in tiles]}
    return Sample(
        image, mask, instances, first.prompt, first.seed, dict(first.quality), {**first.fingerprint, **meta}, first.id
    )


def paste_objects(
    target: Sample, source: Sample, objects: Sequence[int], scale: float, offset: tuple[int, int], feather: float
) -> Sample:
    """Paste `source`'s instances `objects`, scaled by `scale` and moved by `offset` (dy, dx), onto `target`.

    Alpha is each object's mask blurred by `feather` pixels (X-Paste's soft edges); the mask and the
    instances take the pasted object where alpha >= 0.5, and target instances lose what it covers.
    """
    H, W = target.mask.shape
    sh, sw = source.mask.shape
    nh, nw = max(1, round(sh * scale)), max(1, round(sw * scale))
    src = resize_sample(source, nh, nw)
    dy, dx = offset
    # Intersection of the moved source box with the target.
    ty0, tx0, ty1, tx1 = max(0, dy), max(0, dx), min(H, dy + nh), min(W, dx + nw)
    image = target.image.astype(np.float32)
    mask = target.mask.copy()
    covered = np.zeros((H, W), bool)
    pasted: list[Instance] = []
    if ty0 < ty1 and tx0 < tx1:
        sy0, sx0 = ty0 - dy, tx0 - dx
        win = (slice(ty0, ty1), slice(tx0, tx1))
        swin = (slice(sy0, sy0 + ty1 - ty0), slice(sx0, sx0 + tx1 - tx0))
        for k in objects:
            if k >= len(src.instances):
                continue
            inst = src.instances[k]
            m = inst.mask()[swin]
            if not m.any():
                continue
            alpha = ndimage.gaussian_filter(m.astype(np.float32), feather) if feather > 0 else m.astype(np.float32)
            alpha = np.clip(np.maximum(alpha, m * 0.5), 0, 1)[..., None]  # keep the object itself at least half opaque
            image[win] = image[win] * (1 - alpha) + src.image[swin].astype(np.float32) * alpha
            hard = np.zeros((H, W), bool)
            hard[win] = alpha[..., 0] >= 0.5
            mask[hard] = inst.class_id
            covered |= hard
            pasted = [_minus(p, hard) for p in pasted]
            pasted.append(Instance.from_mask(inst.class_id, hard, inst.score))
    kept = [_minus(i, covered) for i in target.instances]
    instances = [i for i in kept + pasted if i.area > 0]
    fp = {**target.fingerprint, "paste": {"source": source.id, "objects": list(objects)}}
    return dataclasses.replace(
        target, image=np.clip(image, 0, 255).round().astype(np.uint8), mask=mask, instances=instances, fingerprint=fp
    )


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of an (H, W, 3) uint8 image, per channel."""
    out = ndimage.gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0))
    return np.clip(out, 0, 255).round().astype(np.uint8)


def motion_kernel(length: int, angle_deg: float) -> np.ndarray:
    """A normalised line kernel of `length` pixels at `angle_deg` (0 = horizontal)."""
    size = length if length % 2 else length + 1
    k = np.zeros((size, size), np.float32)
    c = size // 2
    t = np.linspace(-(length - 1) / 2, (length - 1) / 2, max(2, 4 * length))
    a = np.deg2rad(angle_deg)
    ys = np.clip(np.round(c - t * np.sin(a)).astype(int), 0, size - 1)
    xs = np.clip(np.round(c + t * np.cos(a)).astype(int), 0, size - 1)
    k[ys, xs] = 1.0
    return k / k.sum()


def motion_blur(image: np.ndarray, length: int, angle_deg: float) -> np.ndarray:
    """Linear motion blur of `length` pixels at `angle_deg`."""
    k = motion_kernel(length, angle_deg)
    out = np.stack([ndimage.convolve(image[..., c].astype(np.float32), k, mode="nearest") for c in range(3)], -1)
    return np.clip(out, 0, 255).round().astype(np.uint8)


def mask_boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """Pixels within `width` of a change of label (ignore included), as a bool (H, W) array."""
    edge = np.zeros(mask.shape, bool)
    edge[:-1] |= mask[:-1] != mask[1:]
    edge[1:] |= mask[:-1] != mask[1:]
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:, 1:] |= mask[:, :-1] != mask[:, 1:]
    return ndimage.binary_dilation(edge, iterations=width - 1) if width > 1 else edge


def edge_blur(image: np.ndarray, mask: np.ndarray, sigma: float, width: int) -> np.ndarray:
    """Gaussian blur only within `width` pixels of mask boundaries, softening pasted or generated edges."""
    band = mask_boundary(mask, width)
    out = image.copy()
    out[band] = gaussian_blur(image, sigma)[band]
    return out


# ---------------------------------------------------------------------------------------------- parameterised ops


@dataclass(frozen=True)
class BlurAugment:
    """Gaussian, motion and edge-only blur, each with its own probability; masks are never changed."""

    p_gaussian: float = 0.2
    sigma: tuple[float, float] = (0.5, 1.5)
    p_motion: float = 0.1
    motion_length: tuple[int, int] = (3, 9)
    p_edge: float = 0.2
    edge_sigma: tuple[float, float] = (0.8, 2.0)
    edge_width: int = 2

    def __post_init__(self) -> None:
        _check_probabilities(self, ("p_gaussian", "p_motion", "p_edge"))
        _check_range(self, "sigma", positive=True)
        _check_range(self, "motion_length", positive=True)
        _check_range(self, "edge_sigma", positive=True)
        if self.edge_width < 1:
            raise ValueError(f"BlurAugment.edge_width={self.edge_width} must be >= 1")

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw which blurs apply and their parameters, once per sample."""
        out: dict[str, Any] = {}
        if rng.random() < self.p_gaussian:
            out["gaussian"] = float(rng.uniform(*self.sigma))
        if rng.random() < self.p_motion:
            out["motion"] = (
                int(rng.integers(self.motion_length[0], self.motion_length[1] + 1)),
                float(rng.uniform(0, 180)),
            )
        if rng.random() < self.p_edge:
            out["edge"] = float(rng.uniform(*self.edge_sigma))
        return out

    def apply(self, sample: Sample, params: dict[str, Any]) -> Sample:
        image = sample.image
        if "edge" in params:
            image = edge_blur(image, sample.mask, params["edge"], self.edge_width)
        if "gaussian" in params:
            image = gaussian_blur(image, params["gaussian"])
        if "motion" in params:
            image = motion_blur(image, *params["motion"])
        return sample if image is sample.image else dataclasses.replace(sample, image=image)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        return self.apply(sample, self.sample(rng))


@dataclass(frozen=True)
class SpliceAugment:
    """DiffuMask's grid splice of synthetic tiles (layouts and their probability) and X-Paste's object paste.

    `p_grid`: chance a synthetic sample becomes a grid of itself and other synthetic samples.
    `p_paste`: chance a sample (real, when the mix can hand real samples over as Samples) gets up to
    `max_paste` objects of another synthetic sample pasted on, scaled in `paste_scale`, with alpha
    edges feathered by `feather` pixels.
    """

    p_grid: float = 0.3
    layouts: tuple[tuple[int, int], ...] = ((1, 2), (2, 2), (3, 3))
    p_paste: float = 0.0
    max_paste: int = 3
    paste_scale: tuple[float, float] = (0.5, 1.0)
    feather: float = 1.0

    def __post_init__(self) -> None:
        _check_probabilities(self, ("p_grid", "p_paste"))
        _check_range(self, "paste_scale", positive=True)
        bad = [lay for lay in self.layouts if len(lay) != 2 or min(lay) < 1 or lay == (1, 1)]
        if bad or not self.layouts:
            raise ValueError(f"SpliceAugment.layouts={self.layouts}: give (rows, cols) pairs such as (1, 2), (2, 2)")
        if self.max_paste < 1 or self.feather < 0:
            raise ValueError("SpliceAugment.max_paste must be >= 1 and feather >= 0")

    def sample_grid(self, rng: np.random.Generator) -> tuple[int, int] | None:
        """The grid layout to use, or None."""
        if rng.random() >= self.p_grid:
            return None
        return tuple(self.layouts[int(rng.integers(len(self.layouts)))])  # type: ignore[return-value]

    def grid(self, sample: Sample, rng: np.random.Generator, draw: Callable[[int], list[Sample]]) -> Sample:
        """Maybe splice `sample` with tiles from `draw(n)` (more synthetic samples) into a grid of its size."""
        layout = self.sample_grid(rng)
        if layout is None:
            return sample
        rows, cols = layout
        H, W = sample.mask.shape
        return splice_grid([sample, *draw(rows * cols - 1)], rows, cols, H, W)

    def paste(self, target: Sample, rng: np.random.Generator, draw: Callable[[int], list[Sample]]) -> Sample:
        """Maybe paste objects of one drawn synthetic sample onto `target`."""
        if rng.random() >= self.p_paste:
            return target
        drawn = draw(1)
        if not drawn or not drawn[0].instances:  # nothing to paste (an empty or unreadable pool)
            return target
        source = drawn[0]
        n = int(rng.integers(1, min(self.max_paste, len(source.instances)) + 1))
        objects = sorted(rng.choice(len(source.instances), size=n, replace=False).tolist())
        scale = float(rng.uniform(*self.paste_scale)) * target.mask.shape[0] / source.mask.shape[0]
        H, W = target.mask.shape
        dy = int(rng.integers(-H // 4, H // 4 + 1))
        dx = int(rng.integers(-W // 4, W // 4 + 1))
        return paste_objects(target, source, objects, scale, (dy, dx), self.feather)


@dataclass(frozen=True)
class MixAugment:
    """The augmentations a mix applies: splice and blur, to synthetic samples only unless `to_real` is set."""

    splice: SpliceAugment | None = field(default_factory=SpliceAugment)
    blur: BlurAugment | None = field(default_factory=BlurAugment)
    to_real: bool = False

    @classmethod
    def from_dict(cls, cfg: dict[str, Any] | None) -> MixAugment:
        """Build from plain config values, e.g. {'splice': {'p_grid': 0.5}, 'blur': None}; names a wrong key."""
        cfg = dict(cfg or {})
        unknown = set(cfg) - {"splice", "blur", "to_real"}
        if unknown:
            raise ValueError(f"augment: unknown key(s) {sorted(unknown)}; use 'splice', 'blur', 'to_real'")
        out: dict[str, Any] = {"to_real": bool(cfg.get("to_real", False))}
        for key, kind in (("splice", SpliceAugment), ("blur", BlurAugment)):
            if key in cfg and cfg[key] is None:
                out[key] = None
                continue
            params = dict(cfg.get(key) or {})
            for k, v in params.items():
                if isinstance(v, list):
                    params[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
            try:
                out[key] = kind(**params)
            except TypeError as err:
                raise ValueError(f"augment.{key}: {err}; see synthaug.augment.{kind.__name__}") from None
        return cls(**out)


# ---------------------------------------------------------------------------------------------- helpers


def _minus(inst: Instance, covered: np.ndarray) -> Instance:
    m = inst.mask()
    if not (m & covered).any():
        return inst
    return Instance.from_mask(inst.class_id, m & ~covered, inst.score)


def _check_probabilities(obj: Any, names: Sequence[str]) -> None:
    for n in names:
        v = getattr(obj, n)
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"{type(obj).__name__}.{n}={v} must be a probability in [0, 1]")


def _check_range(obj: Any, name: str, positive: bool = False) -> None:
    lo, hi = getattr(obj, name)
    if lo > hi or (positive and lo <= 0):
        raise ValueError(f"{type(obj).__name__}.{name}=({lo}, {hi}) must be (low, high) with 0 < low <= high")

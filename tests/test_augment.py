"""Splice and blur, as properties: image and mask stay aligned, ignore stays ignore, sizes and dtypes are kept."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synthaug.augment import (
    BlurAugment,
    MixAugment,
    SpliceAugment,
    edge_blur,
    gaussian_blur,
    mask_boundary,
    motion_blur,
    paste_objects,
    splice_grid,
)
from synthaug.sample import Instance, Sample
from synthaug.vocabulary import IGNORE_INDEX

# Each label has its own colour, so alignment can be read back: a pixel's colour names its label.
COLOURS = {0: (0, 0, 0), 1: (250, 0, 0), 2: (0, 250, 0), 3: (0, 0, 250), IGNORE_INDEX: (250, 250, 250)}
LUT = np.zeros((256, 3), np.uint8)
for k, v in COLOURS.items():
    LUT[k] = v


@st.composite
def samples(draw, min_side=4, max_side=40):
    h = draw(st.integers(min_side, max_side))
    w = draw(st.integers(min_side, max_side))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    instances = []
    for _ in range(int(rng.integers(1, 4))):  # rectangles of labels 1..3
        c = int(rng.integers(1, 4))
        y0, x0 = rng.integers(0, h - 1), rng.integers(0, w - 1)
        y1, x1 = y0 + rng.integers(1, h - y0 + 1), x0 + rng.integers(1, w - x0 + 1)
        mask[y0:y1, x0:x1] = c
    if rng.random() < 0.5:  # an ignore band
        mask[:, : max(1, w // 6)] = IGNORE_INDEX
    for c in (1, 2, 3):
        m = mask == c
        if m.any():
            instances.append(Instance.from_mask(c, m))
    return Sample(LUT[mask], mask, instances, "p", seed, id=f"s-{seed}")


def assert_valid(s: Sample, shape) -> None:
    assert s.image.shape == (*shape, 3) and s.image.dtype == np.uint8
    assert s.mask.shape == shape and s.mask.dtype == np.uint8
    for inst in s.instances:
        m = inst.mask()
        assert m.shape == shape and (s.mask[m] == inst.class_id).all()


def interior(mask: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """Pixels farther than one source pixel (`scale` output pixels) from a label change: there bilinear
    resizing blends only same-label pixels, so the image keeps the label's exact colour."""
    return ~mask_boundary(mask, int(np.ceil(scale)) + 2)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(samples(max_side=20), min_size=9, max_size=9),
    st.sampled_from([(1, 2), (2, 2), (3, 3)]),
    st.integers(60, 90),
    st.integers(60, 90),
)
def test_grid_keeps_image_and_mask_aligned(tiles, layout, h, w):
    """Tiles enlarged into their cells: away from label changes each pixel has its label's colour.
    (Shrinking blurs sub-pixel details into the image that a nearest-resized mask cannot keep.)"""
    rows, cols = layout
    used = tiles[: rows * cols]
    out = splice_grid(used, rows, cols, h, w)
    assert_valid(out, (h, w))
    scale = max(max(h / rows / t.mask.shape[0], w / cols / t.mask.shape[1]) for t in used)
    inner = interior(out.mask, scale)
    assert (np.abs(out.image[inner].astype(int) - LUT[out.mask[inner]]) <= 2).all()
    assert set(np.unique(out.mask)) <= set().union(*(set(np.unique(t.mask)) for t in used))


def test_grid_without_resizing_is_an_exact_copy():
    rng = np.random.default_rng(0)
    tiles = []
    for i in range(4):
        mask = rng.integers(0, 4, (8, 10)).astype(np.uint8)
        mask[0, 0] = IGNORE_INDEX
        tiles.append(Sample(LUT[mask], mask, [Instance.from_mask(1, mask == 1)], id=str(i)))
    out = splice_grid(tiles, 2, 2, 16, 20)
    assert (out.mask[8:, 10:] == tiles[3].mask).all() and (out.image[:8, 10:] == tiles[1].image).all()
    assert out.mask[0, 0] == out.mask[8, 10] == IGNORE_INDEX
    assert len(out.instances) == 4 and out.fingerprint["tiles"] == ["0", "1", "2", "3"]


@settings(max_examples=40, deadline=None)
@given(samples(), samples(), st.floats(0.3, 2.0), st.integers(-20, 20), st.integers(-20, 20), st.floats(0, 2))
def test_paste_keeps_alignment_and_uncovered_ignore(target, source, scale, dy, dx, feather):
    out = paste_objects(target, source, list(range(len(source.instances))), scale, (dy, dx), feather)
    assert_valid(out, target.mask.shape)
    changed = out.mask != target.mask
    assert set(np.unique(out.mask[changed])) <= {i.class_id for i in source.instances}
    covered = np.zeros(target.mask.shape, bool)
    for inst in out.instances:
        covered |= inst.mask()
    was_ignore = target.mask == IGNORE_INDEX
    assert (out.mask[was_ignore & ~changed] == IGNORE_INDEX).all()  # ignore stays ignore unless pasted over
    masks = [i.mask() for i in out.instances]
    assert sum((m.astype(int) for m in masks), np.zeros(target.mask.shape, int)).max() <= 1  # no overlaps
    if not feather and scale >= 1:  # hard alpha, enlarged: pasted pixels away from edges take the label's colour
        inner = changed & interior(out.mask, scale)
        assert (np.abs(out.image[inner].astype(int) - LUT[out.mask[inner]]) <= 2).all()


@settings(max_examples=40, deadline=None)
@given(samples(), st.floats(0.3, 3.0), st.integers(2, 9), st.floats(0, 180), st.integers(1, 3))
def test_blurs_change_only_the_image(sample, sigma, length, angle, width):
    for image in (
        gaussian_blur(sample.image, sigma),
        motion_blur(sample.image, length, angle),
        edge_blur(sample.image, sample.mask, sigma, width),
    ):
        assert image.shape == sample.image.shape and image.dtype == np.uint8
    band = mask_boundary(sample.mask, width)
    out = edge_blur(sample.image, sample.mask, sigma, width)
    assert (out[~band] == sample.image[~band]).all()  # edge-only blur leaves the inside untouched
    aug = BlurAugment(p_gaussian=1, p_motion=1, p_edge=1)
    params = aug.sample(np.random.default_rng(0))
    blurred = aug.apply(sample, params)
    # The drawn blurs are applied in order to the image, exactly as their functional twins do ...
    expected = edge_blur(sample.image, sample.mask, params["edge"], aug.edge_width)
    expected = motion_blur(gaussian_blur(expected, params["gaussian"]), *params["motion"])
    assert np.array_equal(blurred.image, expected)
    # ... and mask and instances are the sample's, unchanged.
    assert np.array_equal(blurred.mask, sample.mask) and blurred.instances == sample.instances


def test_parameters_are_drawn_once_and_replayable():
    aug = BlurAugment(p_gaussian=1, p_motion=1, p_edge=1)
    a, b = aug.sample(np.random.default_rng(3)), aug.sample(np.random.default_rng(3))
    assert a == b and set(a) == {"gaussian", "motion", "edge"}
    assert SpliceAugment(p_grid=1).sample_grid(np.random.default_rng(1)) in {(1, 2), (2, 2), (3, 3)}
    assert SpliceAugment(p_grid=0).sample_grid(np.random.default_rng(1)) is None


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"blurr": {}}, "unknown key\\(s\\) \\['blurr'\\]"),
        ({"blur": {"p_gaussian": 1.5}}, "BlurAugment.p_gaussian=1.5 must be a probability"),
        ({"splice": {"layouts": [[1, 1]]}}, "layouts=.*give \\(rows, cols\\) pairs"),
        ({"blur": {"sigma": [2, 1]}}, "BlurAugment.sigma=\\(2, 1\\) must be \\(low, high\\)"),
    ],
)
def test_bad_augment_config_names_the_key(cfg, message):
    with pytest.raises(ValueError, match=message):
        MixAugment.from_dict(cfg)


def test_from_dict_builds_and_disables():
    aug = MixAugment.from_dict({"splice": {"p_grid": 0.5, "layouts": [[2, 2]]}, "blur": None})
    assert aug.splice == SpliceAugment(p_grid=0.5, layouts=((2, 2),)) and aug.blur is None

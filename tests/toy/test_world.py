"""The renderer: deterministic per seed, and its masks match its pixels exactly."""

from __future__ import annotations

import numpy as np
import pytest

from synthaug.toy.world import (
    BACKGROUNDS,
    COLOURS,
    MIN_VISIBLE,
    SHAPES,
    TOY_VOCABULARY,
    caption_for,
    render,
    render_seed,
    sample_scene,
    shape_mask,
)

SEEDS = range(60)


@pytest.mark.parametrize("size", [32, 64])
def test_same_seed_same_pixels(size):
    for seed in SEEDS[:10]:
        a, b = render_seed(seed, size), render_seed(seed, size)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.semantic, b.semantic)
        assert np.array_equal(a.instances, b.instances)
    assert not np.array_equal(render_seed(1).image, render_seed(2).image)


def test_masks_match_pixels():
    for seed in SEEDS:
        r = render_seed(seed, 48)
        grey = (r.image[..., 0] == r.image[..., 1]) & (r.image[..., 1] == r.image[..., 2])
        covered = r.instances.any(0)
        # Background is neutral grey; every object pixel carries its object's colour.
        assert grey[~covered].all()
        for obj, inst in zip(r.scene.objects, r.instances):
            assert (r.image[inst] == np.array(obj.rgb)).all()
            assert (r.semantic[inst] == obj.class_id).all()
        assert (r.semantic[~covered] == 0).all()
        # Instances are disjoint: later objects occlude earlier ones.
        assert (r.instances.sum(0) <= 1).all()


def test_objects_stay_visible_and_vary():
    shapes, colours, backgrounds, counts = set(), set(), set(), set()
    for seed in range(300):
        r = render_seed(seed, 64)
        counts.add(len(r.scene.objects))
        backgrounds.add(r.scene.background)
        for obj, inst in zip(r.scene.objects, r.instances):
            full = shape_mask(obj.shape, obj.cx, obj.cy, obj.half, 64).sum()
            assert inst.sum() >= (MIN_VISIBLE - 0.1) * full  # 0.1: sampling checks visibility on a 48 px grid
            shapes.add(obj.shape)
            colours.add(obj.colour)
        assert len({o.colour for o in r.scene.objects}) == len(r.scene.objects)  # colours distinct per image
    assert shapes == set(SHAPES) and colours == set(COLOURS) and backgrounds == set(BACKGROUNDS)
    assert counts == {1, 2, 3}


def test_caption_names_objects_and_background():
    scene = sample_scene(7)
    words = scene.caption.split()
    for obj in scene.objects:
        assert f"{obj.colour} {obj.shape}" in scene.caption
    assert words[-2:] == ["on", scene.background]
    assert (
        caption_for([("red", "circle"), ("blue", "square")], "stripes") == "a red circle and a blue square on stripes"
    )


def test_same_scene_at_any_size():
    scene = sample_scene(3)
    small, big = render(scene, 32), render(scene, 96)
    assert small.image.shape == (32, 32, 3) and big.image.shape == (96, 96, 3)
    assert set(np.unique(small.semantic)) <= set(range(len(TOY_VOCABULARY)))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown shape"):
        shape_mask("hexagon", 0.5, 0.5, 0.2, 8)
    with pytest.raises(ValueError, match="max_objects"):
        sample_scene(0, min_objects=2, max_objects=1)

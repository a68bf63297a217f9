"""Edge-aware refinement snaps maps to colour edges; instances are components with a minimum area."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthaug.annotators.base import Annotation
from synthaug.annotators.instances import instances_from_mask, quality_figures
from synthaug.annotators.refine import EdgeRefineParams, crf_refine, edge_refine, refine, with_background
from synthaug.toy.world import render_seed
from synthaug.vocabulary import IGNORE_INDEX


def _blurry_square():
    """A red square on grey, and a map of it that is shifted and blurred across the edge."""
    img = np.full((32, 32, 3), 120, np.uint8)
    img[8:24, 8:24] = (220, 40, 40)
    truth = np.zeros((32, 32), bool)
    truth[8:24, 8:24] = True
    yy, xx = np.mgrid[0:32, 0:32]
    m = np.exp(-((((yy - 17) / 9.0) ** 2 + ((xx - 17) / 9.0) ** 2) ** 2))
    return img, truth, torch.tensor(m, dtype=torch.float32)[None]


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_edge_refine_snaps_to_the_colour_edge():
    img, truth, maps = _blurry_square()
    before = _iou(maps[0].numpy() >= 0.5, truth)
    after_maps = edge_refine(maps, img, EdgeRefineParams())
    after = _iou(after_maps[0].numpy() >= 0.5, truth)
    assert after > before + 0.05 and after > 0.9, (before, after)
    assert after_maps.shape == maps.shape and after_maps.min() >= 0 and after_maps.max() <= 1


def test_edge_refine_above_its_working_size_snaps_at_full_resolution():
    """At 256 px the mean field runs at 64 px and guided upsampling restores the full-resolution edge."""
    img, truth, maps = _blurry_square()
    big = np.kron(img, np.ones((8, 8, 1), np.uint8))
    big_truth = np.kron(truth, np.ones((8, 8), bool))
    coarse = torch.nn.functional.interpolate(maps[None], size=(256, 256), mode="bilinear")[0]
    before = _iou(coarse[0].numpy() >= 0.5, big_truth)
    out = edge_refine(coarse, big, EdgeRefineParams(work_size=64))
    after = _iou(out[0].numpy() >= 0.5, big_truth)
    assert out.shape == (1, 256, 256) and after > before + 0.05 and after > 0.95, (before, after)


def test_crf_refine_when_installed():
    pytest.importorskip("pydensecrf.densecrf")
    img, truth, maps = _blurry_square()
    out = crf_refine(maps, img)
    assert out.shape == maps.shape
    assert _iou(out[0].numpy() >= 0.5, truth) > 0.8


def test_refine_dispatch_and_background():
    img, _, maps = _blurry_square()
    assert refine(maps, img, "none") is maps
    with pytest.raises(ValueError, match="refine='blur'"):
        refine(maps, img, "blur")
    p = with_background(maps)
    assert p.shape == (2, 32, 32) and torch.allclose(p.sum(0), torch.ones(32, 32))


def test_instances_are_components_above_min_area():
    mask = np.zeros((20, 20), np.uint8)
    mask[1:6, 1:6] = 2
    mask[10:18, 10:18] = 2  # a second component of class 2
    mask[0, 19] = 1  # a speck: below min area
    mask[15:20, 0:3] = IGNORE_INDEX
    inst = instances_from_mask(mask, min_area=4)
    assert sorted((i.class_id, i.area) for i in inst) == [(2, 25), (2, 64)]
    assert inst[0].bbox == [1.0, 1.0, 5.0, 5.0]


def test_instances_of_renders_match_their_objects():
    """On exact masks: one instance per object when shapes differ; same-shape objects that touch merge."""
    distinct = 0
    for seed in range(100):
        r = render_seed(seed, 64)
        n = len(instances_from_mask(r.semantic, min_area=0.002))
        shapes = [o.shape for o in r.scene.objects]
        assert n <= len(shapes)
        if len(set(shapes)) == len(shapes):
            assert n == len(shapes), seed
            distinct += 1
    assert distinct >= 50  # measured 2026-11-22: 56 of 100 scenes have distinct shapes


def test_quality_figures():
    mask = np.array([[0, 1, 1], [255, 2, 0]], np.uint8)
    winner = np.array([[-1, 0, 0], [-1, 1, -1]])
    conf = np.array([[0.1, 0.8, 1.0], [0.55, 0.9, 0.2]], np.float32)
    q = quality_figures(Annotation(mask, winner, conf), num_targets=3, min_area=1)
    assert q["mean_confidence"] == pytest.approx(0.9)
    assert q["ignore_share"] == pytest.approx(1 / 6) and q["foreground_share"] == pytest.approx(0.5)
    assert q["objects_found"] == pytest.approx(2 / 3)

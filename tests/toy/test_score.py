"""The colour-truth scorer: exact on rendered images, sensitive on wrong ones."""

from __future__ import annotations

import numpy as np
import pytest

from synthaug.metrics import IoUAccumulator
from synthaug.toy.score import (
    PromptedObject,
    check_objects,
    classify_shape,
    colour_truth,
    object_iou,
    parse_caption,
    semantic_truth,
)
from synthaug.toy.world import SHAPES, render_seed, shape_mask


def _objects(r):
    return [PromptedObject(o.colour, o.shape) for o in r.scene.objects]


def test_rendered_image_scores_iou_one_against_its_caption():
    acc = IoUAccumulator(4)
    for seed in range(40):
        r = render_seed(seed, 64)
        objs = parse_caption(r.scene.caption)
        assert objs == _objects(r)
        truth = colour_truth(r.image, objs)
        for inst, t in zip(r.instances, truth):
            assert object_iou(t, inst) == 1.0
        sem = semantic_truth(r.image, objs)
        assert np.array_equal(sem, r.semantic)
        acc.add(r.semantic, sem)
    assert acc.miou() == 1.0


@pytest.mark.parametrize("size", [32, 64])
def test_renders_pass_fidelity(size):
    renders = [render_seed(seed, size) for seed in range(200)]
    checks = [c for r in renders for c in check_objects(r.image, _objects(r))]
    share = np.mean([c.ok for c in checks])
    # Measured 2026-11-22: 0.995 of 419 rendered objects at 32 and 64 px (2 occluded triangles
    # read as squares). Floor 0.97: a margin of 10 objects.
    assert share >= 0.97, share
    assert np.mean([c.colour_ok for c in checks]) == 1.0


def test_wrong_colour_or_shape_fails():
    r = render_seed(5, 64)
    objs = _objects(r)
    wrong_shape = [PromptedObject(o.colour, next(s for s in SHAPES if s != o.shape)) for o in objs]
    assert not any(c.ok for c in check_objects(r.image, wrong_shape))
    blank = np.full((64, 64, 3), 128, np.uint8)
    assert not any(c.colour_ok for c in check_objects(blank, objs))


def test_shape_classifier_on_ideal_shapes():
    for shape in SHAPES:
        assert classify_shape(shape_mask(shape, 0.5, 0.5, 0.3, 64)) == shape
    assert classify_shape(np.zeros((8, 8), bool)) is None


def test_iou_accumulator_ignores_255():
    acc = IoUAccumulator(2)
    pred = np.array([[0, 1], [1, 255]], np.uint8)
    truth = np.array([[0, 1], [0, 1]], np.uint8)
    acc.add(pred, truth)
    assert acc.per_class().tolist() == [0.5, 0.5]
    # The predicted ignore pixel (truth 1) counts as a miss of class 1 when ignore is counted as wrong.
    assert acc.miou_ignore_wrong() == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert acc.ignore_share() == pytest.approx(1 / 4)
    acc.add(np.full((2, 2), 255, np.uint8), np.full((2, 2), 255, np.uint8))  # unknown truth: not judged
    assert acc.ignore_share() == pytest.approx(1 / 4)

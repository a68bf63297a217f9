"""The cross-attention annotator on synthetic attention whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthaug.annotators.cross_attention import (
    CrossAttentionParams,
    aggregate_maps,
    object_maps,
)
from synthaug.annotators.labels import LabelRule, label_maps, otsu_threshold


def _blob_maps(h: int, w: int, boxes: list[tuple[int, int, int, int]], tokens: int = 6) -> torch.Tensor:
    """(1, h, w, L): token i+1 attends inside box i, token 0 (start) everywhere else."""
    m = torch.full((1, h, w, tokens), 0.01)
    m[..., 0] = 1.0
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        m[0, y0:y1, x0:x1, i + 1] = 1.0
        m[0, y0:y1, x0:x1, 0] = 0.0
    return m / m.sum(-1, keepdim=True)


def test_aggregation_resizes_and_averages():
    fine = _blob_maps(16, 16, [(0, 8, 0, 8)])
    coarse = _blob_maps(8, 8, [(0, 4, 0, 4)])
    agg = aggregate_maps({1: fine, 2: coarse}, (1, 2), (16, 16))
    assert agg.shape == (1, 6, 16, 16)
    assert agg[0, 1, :6, :6].min() > 0.9 and agg[0, 1, 10:, 10:].max() < 0.05
    with pytest.raises(ValueError, match=r"factors \[4\] were not captured"):
        aggregate_maps({1: fine}, (1, 4), (16, 16))


def test_objects_sum_their_words_and_normalise():
    maps = torch.zeros(4, 4, 4)
    maps[1, 0, 0] = 2.0  # colour word of object A
    maps[2, 0, 1] = 1.0  # shape word of object A
    maps[3, 3, 3] = 5.0
    obj = object_maps(maps, [[1, 2], [3]])
    assert obj.shape == (2, 4, 4)
    assert obj[0, 0, 0] == 1.0 and obj[0, 0, 1] == pytest.approx(0.5) and obj[0].min() == 0.0
    assert obj[1, 3, 3] == 1.0


def test_threshold_labels_strongest_object_or_background():
    maps = torch.zeros(2, 3, 3)
    maps[0, 0, :] = torch.tensor([1.0, 0.6, 0.4])
    maps[1, 0, 1] = 0.9
    maps[1, 2, 2] = 0.55
    ann = label_maps(maps, class_ids=[3, 7], background_id=0, rule=LabelRule(0.5))
    assert ann.mask.tolist() == [[3, 7, 0], [0, 0, 0], [0, 0, 7]]
    assert ann.winner.tolist() == [[0, 1, -1], [-1, -1, -1], [-1, -1, 1]]
    # The background id is the vocabulary's, whatever it is; without one, unlabelled pixels are ignore.
    assert label_maps(maps, [3, 7], 5, LabelRule(0.5)).mask.tolist() == [[3, 7, 5], [5, 5, 5], [5, 5, 7]]
    assert label_maps(maps, [3, 7], None, LabelRule(0.5)).mask[1].tolist() == [255, 255, 255]


def test_end_to_end_on_known_boxes():
    boxes = [(2, 10, 2, 10), (10, 15, 8, 15)]
    agg = aggregate_maps({1: _blob_maps(16, 16, boxes)}, (1,), (16, 16))[0]
    sem = label_maps(object_maps(agg, [[1], [2]]), [1, 2], 0, LabelRule("otsu")).mask
    truth = np.zeros((16, 16), np.uint8)
    truth[2:10, 2:10] = 1
    truth[10:15, 8:15] = 2
    assert (sem == truth).all()


def test_otsu_splits_two_modes():
    values = np.concatenate([np.full(100, 0.1), np.full(50, 0.8)])
    assert 0.1 < otsu_threshold(values) <= 0.8


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(threshold=1.5), r"lie in \[0, 1\]"),
        (dict(threshold="adaptive"), "otsu"),
        (dict(factors=()), "factors is empty"),
    ],
)
def test_bad_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CrossAttentionParams(**kwargs)

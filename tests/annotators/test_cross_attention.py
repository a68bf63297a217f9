"""The cross-attention annotator on synthetic attention whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthaug.annotators.cross_attention import CrossAttentionParams, normalise, object_maps
from synthaug.annotators.labels import LabelRule, label_maps, otsu_threshold


def _blob_maps(h: int, w: int, boxes: list[tuple[int, int, int, int]], tokens: int = 6) -> torch.Tensor:
    """(1, h, w, L): token i+1 attends inside box i, token 0 (start) everywhere else."""
    m = torch.full((1, h, w, tokens), 0.01)
    m[..., 0] = 1.0
    for i, (y0, y1, x0, x1) in enumerate(boxes):
        m[0, y0:y1, x0:x1, i + 1] = 1.0
        m[0, y0:y1, x0:x1, 0] = 0.0
    return m / m.sum(-1, keepdim=True)


def test_object_maps_resize_and_average_over_factors():
    fine = _blob_maps(16, 16, [(0, 8, 0, 8)])
    coarse = _blob_maps(8, 8, [(0, 4, 0, 4)])
    obj = object_maps({1: fine, 2: coarse}, (1, 2), [[1]], (16, 16))
    assert obj.shape == (1, 16, 16)
    assert obj[0, :6, :6].min() > 0.9 and obj[0, 10:, 10:].max() < 0.05
    with pytest.raises(ValueError, match=r"factors \[4\] were not captured"):
        object_maps({1: fine}, (1, 4), [[1]], (16, 16))


def test_objects_sum_their_words_and_normalise():
    maps = torch.zeros(4, 4, 4)
    maps[1, 0, 0] = 2.0  # colour word of object A
    maps[2, 0, 1] = 1.0  # shape word of object A
    maps[3, 3, 3] = 5.0
    obj = object_maps({1: maps.permute(1, 2, 0)[None]}, (1,), [[1, 2], [3]], (4, 4))
    assert obj.shape == (2, 4, 4)
    assert obj[0, 0, 0] == 1.0 and obj[0, 0, 1] == pytest.approx(0.5) and obj[0].min() == 0.0
    assert obj[1, 3, 3] == 1.0


def test_summing_words_before_resizing_equals_resizing_every_token_first():
    torch.manual_seed(0)
    maps = {1: torch.rand(1, 16, 16, 77).softmax(-1), 2: torch.rand(1, 8, 8, 77).softmax(-1)}
    groups = [[3, 4], [7], [9, 10, 11]]
    every_token = torch.stack(
        [
            F.interpolate(maps[f].permute(0, 3, 1, 2), size=(64, 48), mode="bilinear", align_corners=False)
            for f in (1, 2)
        ]
    ).mean(0)[0]
    reference = normalise(torch.stack([every_token[g].sum(0) for g in groups]))
    assert torch.allclose(object_maps(maps, (1, 2), groups, (64, 48)), reference, atol=1e-5)


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
    objects = object_maps({1: _blob_maps(16, 16, boxes)}, (1,), [[1], [2]], (16, 16))
    sem = label_maps(objects, [1, 2], 0, LabelRule("otsu")).mask
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

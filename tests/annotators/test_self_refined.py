"""Self-attention refinement and its ignore band, on synthetic tensors with a known answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthaug.annotators.labels import label_maps
from synthaug.annotators.self_refined import SelfRefinedAnnotator, SelfRefinedParams, refine_with_affinity
from synthaug.vocabulary import IGNORE_INDEX


def test_affinity_spreads_a_seed_over_its_object():
    # 4x4 grid; pixels of the left half attend only to the left half, right half to the right.
    h = w = 4
    left = torch.zeros(h, w, dtype=torch.bool)
    left[:, :2] = True
    same = (left.reshape(-1, 1) == left.reshape(1, -1)).float()
    affinity = same / same.sum(1, keepdim=True)
    seed = torch.zeros(1, h, w)
    seed[0, 0, 0] = 1.0  # the cross map lights one pixel of the left object
    out = refine_with_affinity(seed, affinity, power=4)
    assert torch.allclose(out[0][left], torch.ones(int(left.sum())))
    assert torch.allclose(out[0][~left], torch.zeros(int((~left).sum())))
    with pytest.raises(ValueError, match="does not fit"):
        refine_with_affinity(seed, affinity[:5, :5], 2)


def test_label_ignore_band():
    maps = torch.tensor([[[0.9, 0.55, 0.2]], [[0.1, 0.3, 0.65]]])  # (K=2, 1, 3)
    ann = label_maps(
        maps, [4, 9], 0, SelfRefinedAnnotator(SelfRefinedParams(label_threshold=0.6, ignore_threshold=0.5)).rule
    )
    sem, winner, conf = ann.mask, ann.winner, ann.confidence
    assert sem.tolist() == [[4, IGNORE_INDEX, 9]]
    assert winner.tolist() == [[0, -1, 1]]
    assert np.allclose(conf, [[0.9, 0.55, 0.65]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(power=0), "power"),
        (dict(label_threshold=0.4, ignore_threshold=0.5), "ignore_threshold"),
        (dict(cross_factors=()), "cross_factors is empty"),
    ],
)
def test_bad_params(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SelfRefinedParams(**kwargs)

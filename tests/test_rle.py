from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from synthaug import rle

masks = st.tuples(st.integers(1, 40), st.integers(1, 40)).flatmap(lambda hw: arrays(bool, hw))


@settings(max_examples=200, deadline=None)
@given(masks)
def test_roundtrip(mask):
    enc = rle.encode(mask)
    assert enc["size"] == list(mask.shape)
    assert np.array_equal(rle.decode(enc), mask)
    assert rle.area(enc) == int(mask.sum())


@settings(max_examples=100, deadline=None)
@given(masks)
def test_matches_pycocotools(mask):
    coco = pytest.importorskip("pycocotools.mask")
    theirs = coco.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert rle.encode(mask)["counts"] == theirs["counts"].decode("ascii")


def test_uncompressed_counts_and_corrupt_counts():
    mask = np.array([[0, 1], [1, 1]], dtype=bool)
    assert np.array_equal(rle.decode({"size": [2, 2], "counts": [1, 3]}), mask)
    with pytest.raises(ValueError, match="corrupt"):
        rle.decode({"size": [3, 3], "counts": [1, 3]})


def test_bbox():
    mask = np.zeros((10, 10), bool)
    mask[2:5, 3:9] = True
    assert rle.bbox(mask) == [3.0, 2.0, 6.0, 3.0]
    assert rle.bbox(np.zeros((3, 3), bool)) == [0.0, 0.0, 0.0, 0.0]

"""Stores with planted label noise, to measure how well loss filtering finds it (tests and benchmarks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthaug.store import StoreWriter, create_store
from synthaug.toy.world import TOY_VOCABULARY, render_seed
from synthaug.vocabulary import ClassVocabulary


def write_planted_store(
    store: str | Path, n: int, size: int = 32, block: int = 8, vocabulary: ClassVocabulary = TOY_VOCABULARY
) -> dict[str, np.ndarray]:
    """`n` toy renders whose masks have a `block` x `block` square of background painted 'circle' (class 1),
    at a place that moves from sample to sample; returns the planted (wrong) pixels by sample id."""
    create_store(store, vocabulary)
    planted = {}
    with StoreWriter(store, "planted", fsync=False) as w:
        for i in range(n):
            sample = render_seed(50_000 + i, size).to_sample()
            square = np.zeros(sample.mask.shape, bool)
            y, x = (i * 7) % (size - block), (i * 11) % (size - block)
            square[y : y + block, x : x + block] = True
            wrong = square & (sample.mask == 0)
            sample.mask = sample.mask.copy()
            sample.mask[wrong] = 1
            planted[w.add(sample)["id"]] = wrong
    return planted

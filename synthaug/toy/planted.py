"""Stores with planted label noise, to measure how well loss filtering finds it (tests and benchmarks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from synthaug import rle
from synthaug.sample import Instance
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


PLANTED_INSTANCE_KINDS = ("moved", "relabelled")


def write_planted_instances(store: str | Path, n: int, kind: str = "moved", size: int = 64) -> dict[str, bool]:
    """`n` toy renders where every other one's first instance is wrong: its mask `moved` a quarter of the image
    down and right, off its object, or its class `relabelled` to the next shape's (mask kept); returns by sample
    id whether its first instance is planted."""
    if kind not in PLANTED_INSTANCE_KINDS:
        raise ValueError(f"kind={kind!r}: use one of {PLANTED_INSTANCE_KINDS}")
    create_store(store, TOY_VOCABULARY)
    planted: dict[str, bool] = {}
    with StoreWriter(store, f"planted-{kind}", fsync=False) as w:
        for i in range(n):
            sample = render_seed(1000 + i, size).to_sample()
            wrong = i % 2 == 0 and bool(sample.instances)
            if wrong:
                first = sample.instances[0]
                pixels = rle.decode(first.rle).astype(bool)
                if kind == "moved":
                    pixels = np.roll(pixels, (size // 4, size // 4), (0, 1))
                    cls = first.class_id
                    sample.mask[pixels & (sample.mask == 0)] = cls
                else:  # the next of the three shapes (ids 1..3)
                    cls = 1 + first.class_id % 3
                    sample.mask[pixels] = cls
                sample.instances[0] = Instance.from_mask(cls, pixels)
            planted[w.add(sample)["id"]] = wrong
    return planted


def planted_instance_verdicts(store: str | Path, planted: dict[str, bool]) -> tuple[list[bool], list[bool]]:
    """Whether the mix, with the store's newest scores, drops each planted instance and each right one:
    (dropped per planted instance, dropped per right instance)."""
    from synthaug.scoring import Scores
    from synthaug.store import SampleStore

    opened = SampleStore(store)
    scores = Scores.newest(store, opened.vocabulary.names)
    if scores is None:
        raise ValueError(f"{store} has no scores yet: score it first (synthaug score)")
    caught, wrongly = [], []
    for k in range(len(opened)):
        sample = opened.read(k)
        served = scores.apply(sample).instances  # what the mix serves: mostly-ignored instances dropped
        for j, inst in enumerate(sample.instances):
            (caught if planted[sample.id] and j == 0 else wrongly).append(inst not in served)
    return caught, wrongly

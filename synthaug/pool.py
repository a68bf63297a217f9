"""The synthetic pool: one agreed snapshot of a store, filtered, and a seeded per-epoch draw of its samples.

A snapshot is ``{segment: count}``: the first `count` records each writer made. Every reader that
adopts the same snapshot holds the same records in the same (canonical) order, whatever order its
own refreshes met them in; that is what lets every rank and worker of a distributed run agree.
Which pool sample fills synthetic slot k of an epoch is a pure function of (snapshot, epoch, seed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthaug.sample import Sample
from synthaug.store import SampleStore, write_reader_lease

log = logging.getLogger(__name__)

POLICIES = ("uniform", "fresh", "class_balanced", "quality")


class EmptyPoolError(RuntimeError):
    """The store holds no sample that passes the filters, and the mix needs some."""


@dataclass(frozen=True)
class PoolParams:
    """How synthetic samples are drawn.

    policy: 'uniform'; 'fresh' (weight halves for every `fresh_half_life` share of the pool a sample
    is older than the newest); 'class_balanced' (a sample weighs 1 / count of its rarest class, as
    repeat-factor sampling does); 'quality' (weight = its `quality_key` figure).
    min_quality: {figure: minimum}, e.g. {'mean_confidence': 0.6}: samples below are left out.
    max_repeats: at most this many uses of one sample per epoch (None: no cap).
    """

    policy: str = "uniform"
    min_quality: Mapping[str, float] = field(default_factory=dict)
    max_repeats: int | None = None
    fresh_half_life: float = 0.25
    quality_key: str = "mean_confidence"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy={self.policy!r} is unknown: use one of {POLICIES}")
        if self.max_repeats is not None and self.max_repeats < 1:
            raise ValueError(f"max_repeats={self.max_repeats} must be >= 1, or None for no cap")
        if not 0 < self.fresh_half_life <= 1:
            raise ValueError(f"fresh_half_life={self.fresh_half_life} must be in (0, 1] (a share of the pool)")


def capped_draw(weights: np.ndarray, n_slots: int, cap: int | None, rng: np.random.Generator) -> np.ndarray:
    """`n_slots` indices drawn with probabilities `weights`, none more than `cap` times while that is possible.

    Weighted sampling without replacement over `cap` copies of each index (Efraimidis-Spirakis), with the
    keys u ** (1 / w) taken as log(u) / w: with weights that sum to 1 over a pool of thousands, u ** (1 / w)
    underflows to 0.0 for most samples, and a stable sort would then fill the slots in index order. Slots
    beyond len(weights) * cap cannot respect the cap and are drawn with replacement.
    """
    n = len(weights)
    if cap is None:
        return rng.choice(n, size=n_slots, p=weights)
    cand = np.tile(np.arange(n), cap)
    with np.errstate(divide="ignore"):  # a zero weight gets the key -inf: drawn last
        keys = np.log(rng.random(cand.size)) / np.tile(weights, cap)
    take = min(n_slots, cand.size)
    out = cand[np.argsort(-keys, kind="stable")[:take]]
    if take < n_slots:
        out = np.concatenate([out, rng.choice(n, size=n_slots - take, p=weights)])
    rng.shuffle(out)
    return out


class SyntheticPool:
    """The records of one adopted snapshot that pass the filters, with their draw weights.

    With `lease`, adopting a snapshot writes a reader lease into the store (the only write a reader makes),
    which a producer rolling the pool honours; without it the pool only reads.
    """

    def __init__(self, store: SampleStore | str, params: PoolParams | None = None, lease: bool = False) -> None:
        self.store = store if isinstance(store, SampleStore) else SampleStore(store)
        self.params = params or PoolParams()
        self.snapshot: dict[str, int] = {}
        self.records: list[dict[str, Any]] = []
        self._weights = np.zeros(0)
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}
        self.lease = lease

    def __len__(self) -> int:
        return len(self.records)

    def current_snapshot(self) -> dict[str, int]:
        """Refresh the store and return what it holds now, as a snapshot to adopt (rank 0 decides this)."""
        self.store.refresh()
        return self.store.snapshot()

    def adopt(self, snapshot: Mapping[str, int], wait_s: float = 30.0) -> int:
        """Hold exactly the records of `snapshot`; waits up to `wait_s` for a lagging file system to show them."""
        deadline = time.monotonic() + wait_s
        while not self.store.holds(snapshot):
            self.store.refresh()
            if self.store.holds(snapshot) or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        chosen = self.store.snapshot_records(dict(snapshot))
        if self.lease:  # keeps what this snapshot holds on disk while a producer rolls the pool
            try:
                write_reader_lease(self.store.root, dict(snapshot), reader=f"-{id(self):x}")
            except OSError as err:  # a read-only store has no producer to warn
                log.warning(
                    "synthaug: no reader lease in %s (%s); a rolling producer may retire early", self.store.root, err
                )
        mq = self.params.min_quality
        if mq:
            chosen = [r for r in chosen if all(r.get("quality", {}).get(k, float("-inf")) >= v for k, v in mq.items())]
        self.snapshot = dict(snapshot)
        self.records = chosen
        self._weights = self._policy_weights()
        self._cache.clear()
        return len(chosen)

    def _policy_weights(self) -> np.ndarray:
        n = len(self.records)
        p = self.params
        if n == 0:
            return np.zeros(0)
        if p.policy == "uniform":
            w = np.ones(n)
        elif p.policy == "fresh":
            created = np.array([r.get("created", 0.0) for r in self.records])
            age_rank = np.empty(n)
            age_rank[np.argsort(-created, kind="stable")] = np.arange(n)  # 0 = newest
            w = 0.5 ** (age_rank / (p.fresh_half_life * n))
        elif p.policy == "class_balanced":
            counts: dict[int, int] = {}
            for r in self.records:
                for c in r.get("classes", ()):
                    counts[c] = counts.get(c, 0) + 1
            bg = self._background_id()
            w = np.array(
                [max((1.0 / counts[c] for c in r.get("classes", ()) if c != bg), default=1.0 / n) for r in self.records]
            )
        else:  # quality
            w = np.array([max(float(r.get("quality", {}).get(p.quality_key, 0.0)), 1e-6) for r in self.records])
        return w / w.sum()

    def _background_id(self) -> int | None:
        voc = self.store.vocabulary
        return voc.names.index(voc.background) if voc.background in voc.names else None

    def assignment(self, n_slots: int, epoch: int, seed: int) -> np.ndarray:
        """Pool index of each of `n_slots` synthetic slots in `epoch`: seeded, weighted, capped by max_repeats."""
        key = (n_slots, epoch, seed)
        if key in self._cache:
            return self._cache[key]
        n = len(self.records)
        if n == 0:
            raise EmptyPoolError("the synthetic pool is empty")
        rng = np.random.default_rng([seed, epoch, 0x5A17])
        out = capped_draw(self._weights, n_slots, self.params.max_repeats, rng)
        if len(self._cache) > 8:
            self._cache.clear()
        self._cache[key] = out
        return out

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` pool indices drawn with the policy's weights (for splice tiles and paste sources)."""
        return rng.choice(len(self.records), size=n, p=self._weights)

    def read(self, index: int) -> Sample | None:
        """Decode pool sample `index`; None (counted in the store's stats) if its files are corrupt."""
        rec = self.records[index]
        return self.store.try_read_record(rec)

    @property
    def corrupt(self) -> dict[str, str]:
        return self.store.stats.corrupt

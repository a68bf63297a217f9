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

from synthaug import rle
from synthaug.sample import Sample
from synthaug.scoring import SCORES_KEY, Scores
from synthaug.store import SampleStore, write_reader_lease
from synthaug.store_rows import RecordList

log = logging.getLogger(__name__)

POLICIES = ("uniform", "fresh", "class_balanced", "quality", "hardness")


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
    loss_filter: bool = False
    max_ignored: float = 0.5
    hardness_cap: float = 3.0

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"policy={self.policy!r} is unknown: use one of {POLICIES}")
        if self.max_repeats is not None and self.max_repeats < 1:
            raise ValueError(f"max_repeats={self.max_repeats} must be >= 1, or None for no cap")
        if not 0 < self.fresh_half_life <= 1:
            raise ValueError(f"fresh_half_life={self.fresh_half_life} must be in (0, 1] (a share of the pool)")
        if not 0 <= self.max_ignored <= 1:
            raise ValueError(
                f"max_ignored={self.max_ignored} must be in [0, 1] (a share of a sample's labelled pixels)"
            )
        if not self.hardness_cap >= 1:
            raise ValueError(f"hardness_cap={self.hardness_cap} must be >= 1 (the largest weight over the mean)")

    @property
    def uses_scores(self) -> bool:
        return self.loss_filter or self.policy == "hardness"


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


def hardness_weights(records: list[dict[str, Any]], scores: Scores | None, cap: float) -> np.ndarray:
    """w_i = clip(h_i / mean(h), 1 / cap, cap) over the scored samples' hardness h; unscored samples weigh 1."""
    h = np.array(
        [s.hardness if scores is not None and (s := scores.get(r["id"])) else np.nan for r in records], dtype=float
    )
    scored = np.isfinite(h)
    w = np.ones(len(records))
    mean = float(h[scored].mean()) if scored.any() else 0.0
    if mean > 0:
        w[scored] = np.clip(h[scored] / mean, 1.0 / cap, cap)
    return w


class SyntheticPool:
    """The records of one adopted snapshot that pass the filters, with their draw weights.

    With `lease`, adopting a snapshot writes a reader lease into the store (the only write a reader makes),
    which a producer rolling the pool honours; without it the pool only reads.
    """

    def __init__(self, store: SampleStore | str, params: PoolParams | None = None, lease: bool = False) -> None:
        self.store = store if isinstance(store, SampleStore) else SampleStore(store)
        self.params = params or PoolParams()
        self.snapshot: dict[str, int] = {}
        self.records: RecordList = RecordList()
        self._weights = np.zeros(0)
        self._cache: dict[tuple[int, int, int], np.ndarray] = {}
        self.lease = lease
        self._adopted: tuple[dict[str, int], int] | None = None  # (snapshot, store version) of the records held
        self.scores: Scores | None = None
        self.filtered_out = 0  # samples the loss filter left out of the adopted snapshot
        self._told_no_scores = False
        self._newest: Scores | None = None  # the newest scores, as current_snapshot last saw them

    def __len__(self) -> int:
        return len(self.records)

    def current_snapshot(self) -> dict[str, int]:
        """Refresh the store and return what it holds now, as a snapshot to adopt (rank 0 decides this)."""
        self.store.refresh()
        snapshot = self.store.snapshot()
        if self.params.uses_scores:  # the scores file is part of the snapshot: every reader of it applies the same
            self._newest = Scores.newest(self.store.root, self.store.vocabulary.names, known=self._newest)
            snapshot[SCORES_KEY] = self._newest.stamp if self._newest is not None else 0
        return snapshot

    def adopt(self, snapshot: Mapping[str, int], wait_s: float = 30.0) -> int:
        """Hold exactly the records of `snapshot`; waits up to `wait_s` for a lagging file system to show them."""
        deadline = time.monotonic() + wait_s
        records_of = {k: v for k, v in snapshot.items() if k != SCORES_KEY}  # what the store knows of
        while not self.store.holds(records_of):
            self.store.refresh()
            if self.store.holds(records_of) or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        # Nothing changed since the last adopt (same snapshot, same store records): same records, same weights.
        unchanged = (dict(snapshot), self.store.version) == self._adopted
        chosen = self.records if unchanged else self.store.snapshot_records(records_of)
        if self.lease:  # keeps what this snapshot holds on disk while a producer rolls the pool
            try:
                write_reader_lease(self.store.root, records_of, reader=f"-{id(self):x}")
            except OSError as err:  # a read-only store has no producer to warn
                log.warning(
                    "synthaug: no reader lease in %s (%s); a rolling producer may retire early", self.store.root, err
                )
        if unchanged:
            return len(chosen)
        mq = self.params.min_quality
        if mq:
            keep = np.ones(len(chosen), dtype=bool)
            for k, v in mq.items():
                keep &= chosen.quality(k, missing=-np.inf) >= v
            chosen = chosen.filter(keep)
        if self.params.uses_scores:
            chosen = self._score_filter(chosen, snapshot.get(SCORES_KEY))
        self.snapshot = dict(snapshot)
        self.records = RecordList.of(chosen)
        self._weights = self._policy_weights()
        self._cache.clear()
        self._adopted = (dict(snapshot), self.store.version)
        return len(chosen)

    def _score_filter(self, chosen: RecordList, stamp: int | None) -> RecordList:
        """Take up the snapshot's scores file (`stamp`; None, from a snapshot taken without scores: the newest)
        and drop the samples whose ignored share is over max_ignored."""
        root, names = self.store.root, self.store.vocabulary.names
        if stamp is None:
            newest = Scores.newest(root, names, known=self.scores)
        else:
            newest = Scores.at(root, stamp, names, known=self.scores) if stamp else None
            if stamp and newest is None:
                log.warning("synthaug: the scores file %020d-* in %s is gone: serving unfiltered samples", stamp, root)
        if newest is None and not stamp and not self._told_no_scores:
            log.warning("synthaug: %s holds no scores yet (run `synthaug score`): serving unfiltered samples", root)
            self._told_no_scores = True
        self.scores = newest
        self.filtered_out = 0
        if newest is None or not self.params.loss_filter:
            return chosen
        cap = self.params.max_ignored
        keep = np.array([(s := newest.get(r["id"])) is None or s.ignored_share <= cap for r in chosen], dtype=bool)
        self.filtered_out = int((~keep).sum())
        return chosen.filter(keep)

    def _policy_weights(self) -> np.ndarray:
        n = len(self.records)
        p = self.params
        if n == 0:
            return np.zeros(0)
        # Computed on the records' columns (synthaug.store_rows), never one Python object per record.
        if p.policy == "uniform":
            w = np.ones(n)
        elif p.policy == "fresh":
            created = self.records.column("created")
            w = np.empty(n)  # the sample of age rank r (0 = newest) weighs 0.5 ** (r / (half life * n))
            w[np.argsort(-created, kind="stable")] = 0.5 ** (np.arange(n) / (p.fresh_half_life * n))
        elif p.policy == "class_balanced":  # 1 / count of its rarest class but the background; 1 / n without one
            counts, none = self.records.class_counts().astype(np.int32), np.iinfo(np.int32).max
            bg = self._background_id()
            if bg is not None:
                counts[bg] = none  # never a sample's rarest class
            rarest = self.records.min_over_classes(counts, empty=none)
            w = np.where(rarest < none, 1.0 / rarest, 1.0 / n)
        elif p.policy == "hardness":
            w = hardness_weights(self.records, self.scores, p.hardness_cap)
        else:  # quality
            w = np.maximum(self.records.quality(p.quality_key, missing=0.0), 1e-6)
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
        """Decode pool sample `index` (with the loss filter's ignored pixels, if on); None (counted in the
        store's stats) if its files are corrupt. A sample whose scores do not fit it is served unfiltered."""
        rec = self.records[index]
        sample = self.store.try_read_record(rec)
        if sample is None or self.scores is None or not self.params.loss_filter:
            return sample
        try:
            return self.scores.apply(sample)
        except ValueError as err:
            log.warning("synthaug: the scores of %s do not fit it (%s): served unfiltered", rec["id"], err)
            return sample

    def ignored_area(self, index: int) -> int:
        """Pixels of pool sample `index` that the loss filter ignores (0 with the filter off or no score)."""
        if self.scores is None or not self.params.loss_filter:
            return 0
        score = self.scores.get(self.records[index]["id"])
        return 0 if score is None or score.ignored is None else rle.area(score.ignored)

    @property
    def corrupt(self) -> dict[str, str]:
        return self.store.stats.corrupt

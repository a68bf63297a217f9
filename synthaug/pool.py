"""The synthetic pool: one agreed snapshot of a store, filtered, and a seeded per-epoch draw of its samples.

A snapshot is ``{segment: count}``: the first `count` records each writer made. Every reader that
adopts the same snapshot holds the same records in the same (canonical) order, whatever order its
own refreshes met them in; that is what lets every rank and worker of a distributed run agree.
Which pool sample fills synthetic slot k of an epoch is a pure function of (snapshot, epoch, seed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthaug import rle
from synthaug.sample import Sample
from synthaug.scoring import SCORES_KEY, Scores
from synthaug.store import SampleStore, write_reader_lease
from synthaug.store_rows import RecordList, parse_id

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


def hardness_weights(records: Sequence[Mapping[str, Any]], scores: Scores | None, cap: float) -> np.ndarray:
    """w_i = clip(h_i / mean(h), 1 / cap, cap) over the scored samples' hardness h; unscored samples weigh 1."""
    h = np.array(
        [s.hardness if scores is not None and (s := scores.get(r["id"])) else np.nan for r in records], dtype=float
    )
    return capped_ratios(h, cap)


def capped_ratios(h: np.ndarray, cap: float) -> np.ndarray:
    """clip(h_i / mean(h), 1 / cap, cap) where h_i is finite (a scored sample), 1 elsewhere."""
    scored = np.isfinite(h)
    w = np.ones(len(h))
    mean = float(h[scored].mean()) if scored.any() else 0.0
    if mean > 0:
        w[scored] = np.clip(h[scored] / mean, 1.0 / cap, cap)
    return w


class ScoreColumns:
    """A scores file's figures as arrays per segment, sorted by id key (store_rows.parse_id), so that a pool looks
    up all its records at once instead of one id string at a time (made once per scores file it adopts)."""

    def __init__(self, scores: Scores | None) -> None:
        self.scores = scores
        found: dict[str, list[tuple[int, float, float]]] = {}
        for sid, score in scores.by_id.items() if scores is not None else ():
            parsed = parse_id(sid)  # an id no record can have (not '<segment>-<ascii digits>') matches none
            if parsed is not None:
                found.setdefault(parsed[0], []).append((parsed[1], score.ignored_share, score.hardness))
        self.tables: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        for seg, items in found.items():
            items.sort()
            keys = np.array([k for k, _, _ in items], dtype=np.int64)
            figures = {
                "ignored_share": np.array([v for _, v, _ in items]),
                "hardness": np.array([h for *_, h in items]),
            }
            self.tables[seg] = keys, figures

    def values(self, records: RecordList, figure: str) -> np.ndarray:
        """Figure `figure` ('ignored_share' or 'hardness') of each record, NaN where the scores have none."""
        parts = []
        for seg, rows in records.runs:
            want = seg.keys(rows)
            out = np.full(len(want), np.nan)
            table = self.tables.get(seg.name)
            if table is not None:
                keys, figures = table
                at = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
                hit = keys[at] == want
                out[hit] = figures[figure][at[hit]]
            parts.append(out)
        return np.concatenate(parts) if parts else np.zeros(0)


#: The class_balanced key of a class that is never a sample's rarest (the background), and of no class at all.
_NONE = np.iinfo(np.int32).max


def _room(n: int) -> int:
    """Spare entries kept beside a buffer of n (about 3%): room for many refreshes' new records before it is copied."""
    return max(n // 32, 4096)


class _Gapped:
    """A 1-d array that takes sorted insertions in place, with spare room at both ends: entries added near either end
    cost about what they add, not a new copy of the whole array (whose first touch alone, page faults, costs about
    as much as the copy at a million entries)."""

    def __init__(self, data: np.ndarray) -> None:
        room = _room(len(data))
        self.buf = np.empty(len(data) + 2 * room, dtype=data.dtype)
        self.lo, self.hi = room, room + len(data)
        self.buf[self.lo : self.hi] = data

    @property
    def array(self) -> np.ndarray:
        """The entries: a view, changed by the next insert."""
        return self.buf[self.lo : self.hi]

    def insert(self, before: np.ndarray, new: np.ndarray) -> None:
        """What np.insert(self.array, before, new) gives, for ascending `before`, in place: the entries between the
        first and the last insertion are rebuilt, and those on the shorter side of them move to make room."""
        k = len(new)
        if not k:
            return
        first, last = int(before[0]), int(before[-1])
        middle = np.insert(self.array[first:last], before - first, new)
        buf, n = self.buf, self.hi - self.lo
        if self.lo >= k and (first <= n - last or self.hi + k > len(buf)):  # the head moves k places down
            buf[self.lo - k : self.lo - k + first] = buf[self.lo : self.lo + first]
            self.lo -= k
        elif self.hi + k <= len(buf):  # the tail moves k places up
            buf[self.lo + last + k : self.hi + k] = buf[self.lo + last : self.hi]
            self.hi += k
        else:  # no room left: a new buffer, with room again
            self.__init__(np.concatenate([self.array[:first], middle, self.array[last:]]))
            return
        buf[self.lo + first : self.lo + first + len(middle)] = middle

    def splice(self, at: np.ndarray, new: np.ndarray) -> None:
        """Put the entries `new` at positions `at` (ascending) of the result, as RecordList.added_since gives the
        positions of added records."""
        self.insert(at - np.arange(len(at)), new)


def _renumber(indices: np.ndarray, at: np.ndarray, n_old: int) -> None:
    """Renumber indices into the `n_old` old records, in place, for the grown list, in which records were added at
    positions `at` (ascending): each moves up by the number of records added before it."""
    if len(at) and at[0] < n_old:
        shift = np.cumsum(np.bincount(at - np.arange(len(at)), minlength=n_old + 1))
        indices += shift[indices]


def _merge_sorted(order: _Gapped, keys: _Gapped, idx: np.ndarray, new_keys: np.ndarray) -> None:
    """Merge into indices `order`, sorted by (key, index), with their sorted `keys`, new indices `idx` whose keys
    are `new_keys` (sorted the same way): both then hold what a stable argsort of all the keys gives."""
    sorted_keys, sorted_order = keys.array, order.array
    pos = np.searchsorted(sorted_keys, new_keys, side="left")
    end = np.searchsorted(sorted_keys, new_keys, side="right")
    tied = np.flatnonzero(end > pos)  # keys some old items share: the new item goes after those of smaller index
    for group in np.split(tied, np.flatnonzero(np.diff(pos[tied])) + 1) if len(tied) else ():
        lo, hi = pos[group[0]], end[group[0]]
        pos[group] += np.searchsorted(sorted_order[lo:hi], idx[group])
    order.insert(pos, idx)
    keys.insert(pos, new_keys)


def _rarest_class(records: RecordList, class_order: np.ndarray) -> np.ndarray:
    """Each record's first class in `class_order` (its rarest, when that order is by count), 256 for one without
    classes (as indices: the weights are looked up with them)."""
    rank = np.empty(256, dtype=np.int32)
    rank[class_order] = np.arange(256, dtype=np.int32)
    first = records.min_over_classes(rank, empty=256)
    return np.append(class_order, 256).astype(np.intp)[first]


class PolicyWeights:
    """The draw weights of a pool's records under one policy, normalised to sum to 1.

    A snapshot that only adds records to the one weighed last (RecordList.added_since) is weighed from what was kept
    of it: 'class_balanced' keeps the class counts and each record's rarest class (recomputed for all only when the
    order of the classes by count changed), 'fresh' the records' order by age (the new records are merged into it,
    not sorted again with all). The weights are bit for bit those a computation from scratch gives; only the work
    differs (tests/test_store_index.py compares them).
    """

    def __init__(self, params: PoolParams, background: int | None) -> None:
        self.params, self.background = params, background
        self.records = RecordList()  # the records weighed last, which the kept state describes
        self._counts = np.zeros(256, dtype=np.int64)
        self._class_order = np.zeros(0, dtype=np.int64)
        self._rarest = _Gapped(np.zeros(0, dtype=np.intp))
        self._age_order = _Gapped(np.zeros(0, dtype=np.intp))
        self._age_keys = _Gapped(np.zeros(0))
        self._ranks = self._scratch = np.zeros(0)  # see _by_rank

    def __call__(self, records: RecordList, hardness: np.ndarray | None = None) -> np.ndarray:
        """Weights of `records` (`hardness`: their hardness, NaN where unscored, for the 'hardness' policy)."""
        grown = records.added_since(self.records) if len(self.records) else None
        self.records = RecordList()  # until the kept state describes `records` (a failure leaves a fresh start)
        w = self._compute(records, grown, hardness)
        self.records = records
        return w

    def _compute(
        self, records: RecordList, grown: tuple[np.ndarray, RecordList] | None, hardness: np.ndarray | None
    ) -> np.ndarray:
        """The weights of `records`; `grown` (RecordList.added_since of the records weighed last): from the kept state."""
        n, policy = len(records), self.params.policy
        if n == 0:
            return np.zeros(0)
        if policy == "uniform":
            return np.full(n, 1.0 / n)  # what ones(n) / n is
        if policy == "fresh":
            w = self._fresh(records, grown)
        elif policy == "class_balanced":
            w = self._class_balanced(records, grown)
        elif policy == "hardness":
            assert hardness is not None, "the hardness policy weighs by the scores' hardness"
            w = capped_ratios(hardness, self.params.hardness_cap)
        else:  # quality: a missing figure (NaN) weighs as 0, then at least 1e-6
            w = records.quality(self.params.quality_key)  # a new array
            np.fmax(w, 1e-6, out=w)
        w /= w.sum()
        return w

    def _fresh(self, records: RecordList, grown: tuple[np.ndarray, RecordList] | None) -> np.ndarray:
        """The sample of age rank r (0 = newest; equal times in record order) weighs 0.5 ** (r / (half life * n))."""
        n = len(records)
        if grown is None:
            neg = -records.column("created")
            order = np.argsort(neg, kind="stable")
            self._age_order, self._age_keys = _Gapped(order), _Gapped(neg[order])
        else:
            at, added = grown
            _renumber(self._age_order.array, at, len(self._age_order.array))
            neg = -added.column("created")
            own = np.argsort(neg, kind="stable")
            _merge_sorted(self._age_order, self._age_keys, at[own], neg[own])
        w = np.empty(n)
        w[self._age_order.array] = self._by_rank(n)
        return w

    def _by_rank(self, n: int) -> np.ndarray:
        """0.5 ** (r / (half life * n)) for the ranks r = 0 .. n - 1, in a buffer kept between calls (a view)."""
        if len(self._ranks) < n:
            self._ranks = np.arange(n + _room(n), dtype=np.float64)
            self._scratch = np.empty(len(self._ranks))
        out = self._scratch[:n]
        np.divide(self._ranks[:n], self.params.fresh_half_life * n, out=out)
        return np.power(0.5, out, out=out)

    def _class_balanced(self, records: RecordList, grown: tuple[np.ndarray, RecordList] | None) -> np.ndarray:
        """1 / count of the sample's rarest class but the background; 1 / n without one."""
        counts = records.class_counts() if grown is None else self._counts + grown[1].class_counts()
        table = counts.astype(np.int32)
        if self.background is not None:
            table[self.background] = _NONE  # never a sample's rarest class
        order = np.argsort(table, kind="stable")
        if grown is not None and np.array_equal(order, self._class_order):  # each old record's rarest class holds
            self._rarest.splice(grown[0], _rarest_class(grown[1], order))
        else:
            self._rarest = _Gapped(_rarest_class(records, order))
        self._counts, self._class_order = counts, order
        least = np.append(table, np.int32(_NONE))  # by rarest class (256: none)
        with np.errstate(divide="ignore"):  # a class no record has counts 0, and is no record's rarest
            per_class = np.where(least < _NONE, 1.0 / least, 1.0 / len(records))
        return np.take(per_class, self._rarest.array)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to a worker) without the kept state: the next snapshot there is weighed from scratch."""
        return {"params": self.params, "background": self.background}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["params"], state["background"])


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
        self._weigh = PolicyWeights(self.params, self._background_id())
        self._score_columns = ScoreColumns(None)
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
        hardness = self._score_values(self.records, "hardness") if self.params.policy == "hardness" else None
        self._weights = self._weigh(self.records, hardness)
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
        keep = ~(self._score_values(chosen, "ignored_share") > self.params.max_ignored)  # NaN (unscored): kept
        self.filtered_out = int((~keep).sum())
        return chosen.filter(keep)

    def _score_values(self, records: RecordList, figure: str) -> np.ndarray:
        """Scores figure `figure` of each of `records` (NaN where unscored), from the adopted scores."""
        if self._score_columns.scores is not self.scores:
            self._score_columns = ScoreColumns(self.scores)
        return self._score_columns.values(records, figure)

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

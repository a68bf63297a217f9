"""SyntheticMixDataset: the user's real dataset plus synthetic samples from a store, at a chosen ratio.

How an epoch is laid out. With ``n`` real samples and ratio ``r`` (the expected share of synthetic
samples), the mix has ``n + m`` indices where ``m = round(n * r / (1 - r))``: indices ``0..n-1`` are
the real samples in their own order (so real data keeps its epoch semantics: each is seen once),
and ``n..n+m-1`` are synthetic slots. Your sampler shuffles them as it always does. Synthetic slot
k of epoch e holds pool sample ``pool.assignment(m, e, seed)[k]``, so what index i serves is a pure
function of (i, epoch, seed, pool snapshot): every rank and worker agrees, and a resumed run that
sets the same epoch replays the same plan.

With a ratio schedule the length is fixed by the largest ratio; while the scheduled ratio is
lower, the surplus synthetic slots serve real samples (drawn from a seeded per-epoch
permutation), so the served synthetic share follows the schedule.

Where training is, and which snapshot of the store an epoch draws from, is the mix plan
(synthaug.mix_plan): a planned sampler tags every index with its stream position, so each item carries
its own epoch and iteration into the DataLoader worker that makes it, and each epoch's snapshot is
decided once, in the main process, when that epoch is first planned (rank 0 takes it and broadcasts it).
The plan is saved in checkpoints (`plan_state`), so a resumed run serves what an uninterrupted one would,
and store growth is adopted at epoch boundaries. Without a planned sampler, plain indices follow the
epoch and iteration that the integrations' hooks set, and `refresh()` adopts growth at once.
Corrupt samples are skipped and counted, never fatal.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthaug.augment import MixAugment
from synthaug.mix_plan import Layout, MixPlan, untag
from synthaug.pool import EmptyPoolError, PoolParams, SyntheticPool
from synthaug.sample import Sample
from synthaug.store import SampleStore, wait_for_store
from synthaug.vocabulary import IGNORE_INDEX, match_classes

log = logging.getLogger(__name__)

COUNTERS = ("served_real", "served_synthetic", "corrupt_skipped", "unplanned", "ignored_px", "labelled_px")
#: What the integrations log from counters(), as synthaug_<key> (mmseg) or synthaug/<key> (detectron2);
#: the last two only with the loss filter on (counters() has them then).
LOGGED_COUNTERS = (
    "synthetic_share",
    "pool_size",
    "served_synthetic",
    "served_real",
    "corrupt_skipped",
    "ignored_share",
    "filtered_out",
)
_MAX_PROCS = 64  # counter rows: the main process and up to 63 DataLoader workers
_SNAPSHOT_BYTES = 1 << 22  # 4 MiB of shared memory (/dev/shm): a plan of thousands of distinct snapshots
_MAX_CORRUPT_RETRIES = 16
_PLAN_WAIT_S = 10.0  # how long a worker waits for the main process to plan an epoch it reached


@dataclass
class ConsumedTally:
    """Real and synthetic items the model trained on, counted from its batches (a loader's workers prefetch
    ahead, so what the mix served is not what was trained on). Hooks save it in checkpoints."""

    real: int = 0
    synthetic: int = 0

    def add(self, synthetic: int, total: int) -> None:
        self.synthetic += int(synthetic)
        self.real += int(total) - int(synthetic)

    @property
    def share(self) -> float:
        total = self.real + self.synthetic
        return self.synthetic / total if total else math.nan

    def state_dict(self) -> dict[str, int]:
        return {"real": self.real, "synthetic": self.synthetic}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        self.real, self.synthetic = int(state.get("real", 0)), int(state.get("synthetic", 0))


def synthetic_count(n_real: int, ratio: float) -> int:
    """Synthetic slots per epoch for `n_real` real samples at expected synthetic share `ratio`."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio={ratio} must be in [0, 1): it is the expected share of synthetic samples")
    return round(n_real * ratio / (1.0 - ratio))


@dataclass(frozen=True)
class RatioSchedule:
    """The synthetic share over training iterations: real only for `warmup` iterations, then constant
    (`start`), or linear from `start` to `end` over the next `iterations`."""

    start: float
    end: float | None = None
    iterations: int = 0
    warmup: int = 0

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            v = getattr(self, name)
            key = "ratio" if self.end is None else f"ratio {name}"
            if v is not None and not 0.0 <= v < 1.0:
                raise ValueError(f"{key}={v} must be in [0, 1): it is the expected share of synthetic samples")
        if self.end is not None and self.iterations < 1:
            raise ValueError("a linear ratio schedule needs iterations >= 1")
        if self.warmup < 0:
            raise ValueError(f"ratio warmup={self.warmup} must be >= 0 (real-only iterations at the start)")

    @classmethod
    def parse(cls, value: float | Mapping[str, Any] | RatioSchedule) -> RatioSchedule:
        """A float; dict(type='constant', ratio=0.5, warmup=1000); or
        dict(type='linear', start=0.5, end=0.1, iterations=10000, warmup=0)."""
        if isinstance(value, RatioSchedule):
            return value
        if isinstance(value, Mapping):
            cfg = dict(value)
            kind = cfg.pop("type", "linear")
            keys = {"linear": {"start", "end", "iterations"}, "constant": {"ratio"}}.get(kind)
            if keys is None or not keys <= set(cfg) or set(cfg) - keys - {"warmup"}:
                raise ValueError(
                    f"ratio={dict(value)}: give a number, dict(type='constant', ratio=..., warmup=...) or "
                    "dict(type='linear', start=..., end=..., iterations=..., warmup=0)"
                )
            warmup = int(cfg.get("warmup", 0))
            if kind == "constant":
                return cls(float(cfg["ratio"]), warmup=warmup)
            return cls(float(cfg["start"]), float(cfg["end"]), int(cfg["iterations"]), warmup)
        return cls(float(value))

    @property
    def max(self) -> float:
        return self.start if self.end is None else max(self.start, self.end)

    def __call__(self, iteration: int) -> float:
        if iteration < self.warmup:
            return 0.0
        if self.end is None:
            return self.start
        t = min(max(iteration - self.warmup, 0) / self.iterations, 1.0)
        return self.start + (self.end - self.start) * t


class _SharedState:
    """What DataLoader workers must see of the main process, in shared memory: the clock the hooks move
    (epoch, iteration), the layout of planned positions, the resume position, counters, and the published
    snapshots (the latest one adopted and the plan)."""

    EPOCH, ITERATION, GENERATION, BATCH, WORLD, START, PER_EPOCH, BATCHES_PER_EPOCH = range(8)

    def __init__(self) -> None:
        self.clock = torch.zeros(8, dtype=torch.int64).share_memory_()
        self.counters = torch.zeros(_MAX_PROCS, len(COUNTERS), dtype=torch.int64).share_memory_()
        self.snapshot = torch.zeros(_SNAPSHOT_BYTES, dtype=torch.uint8).share_memory_()
        self.snapshot_len = torch.zeros(1, dtype=torch.int64).share_memory_()

    def publish(self, latest: Mapping[str, int], plan: MixPlan) -> int:
        """Write the latest snapshot and the plan for workers; returns the new generation.

        The generation is odd while the buffer is written and even once it is whole (a sequence lock), so a
        worker never parses a half-written buffer. A plan too large for the buffer loses its oldest epochs
        (a worker that meets one draws from the oldest epoch kept, and counts it as unplanned).
        """
        start = min(plan.snapshots, default=0)
        while True:
            data = json.dumps({"latest": dict(sorted(latest.items())), "plan": plan.since(start).state_dict()})
            if len(data) <= _SNAPSHOT_BYTES or start > max(plan.snapshots, default=0):
                break
            start += max(1, (max(plan.snapshots) - start) // 4)
        raw = data.encode()
        if len(raw) > _SNAPSHOT_BYTES:
            raise ValueError(f"the store has too many segments ({len(latest)}) to share; merge some segments")
        self.clock[self.GENERATION] += 1
        try:
            self.snapshot[: len(raw)] = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            self.snapshot_len[0] = len(raw)
        finally:  # even again, whatever happened: readers never spin on a publish that died
            self.clock[self.GENERATION] += 1
        return int(self.clock[self.GENERATION])

    def read(self, known: int) -> tuple[int, dict[str, int], MixPlan] | None:
        """(generation, latest snapshot, plan) as last published, or None if it is still generation `known`."""
        while True:
            gen = int(self.clock[self.GENERATION])
            if gen == known:
                return None
            if gen % 2 == 0:
                n = int(self.snapshot_len[0])
                raw = bytes(self.snapshot[:n].numpy())
                if int(self.clock[self.GENERATION]) == gen:
                    if not n:
                        return gen, {}, MixPlan()
                    try:
                        data = json.loads(raw)
                        return gen, data["latest"], MixPlan.from_state(data["plan"])
                    except (ValueError, KeyError):  # bytes seen before the write was visible: read again
                        pass
            time.sleep(0.001)  # a publish is under way

    @property
    def layout(self) -> Layout | None:
        return self.layout_of(self.clock.tolist())

    @classmethod
    def layout_of(cls, clock: list[int]) -> Layout | None:
        """The planned sampler's layout in a read of the clock (None when no planned sampler set one)."""
        batch = clock[cls.BATCH]
        return Layout(batch, clock[cls.WORLD], clock[cls.PER_EPOCH], clock[cls.BATCHES_PER_EPOCH]) if batch else None


def _proc_row() -> int:
    info = torch.utils.data.get_worker_info()
    return 0 if info is None else 1 + info.id % (_MAX_PROCS - 1)


class SyntheticMixDataset:
    """The real dataset's samples plus synthetic ones from a store (see the module docstring for the plan).

    real: any sequence (len + getitem), returned item by item unchanged.
    synthetic: a store path or SampleStore. ratio: float in [0, 1), or a RatioSchedule / its dict.
    seed: the plan's seed. policy, min_quality, max_repeats, loss_filter, max_ignored, hardness_cap: how
    synthetic samples are drawn and filtered by their scores (PoolParams, synthaug.scoring).
    augment: MixAugment or its dict: splice and blur, synthetic only unless to_real.
    real_classes: the real dataset's class names (in its label id order); the store's classes are matched to
    them by name, so synthetic masks and instances carry the real dataset's ids. class_map: {store name:
    real name, real id, or None (-> ignore)} for the store classes whose names differ; class_map_key names
    it in errors (the config key the user sets). A store background the real dataset lacks is ignored.
    reader_lease: keep a lease file in the store while reading, so a rolling producer does not delete
    what this reader's snapshot holds (off by default: training then never writes into the store).
    synthetic_transform: turns a Sample into the item your pipeline expects (integrations set this).
    real_to_sample / sample_to_real: let splice paste and blur act on real items too (optional).
    empty: 'error' (default) fails at start if the pool is empty; 'wait' waits up to wait_timeout s.
    """

    def __init__(
        self,
        real: Sequence[Any],
        synthetic: str | Path | SampleStore | None,
        ratio: float | Mapping[str, Any] | RatioSchedule = 0.25,
        seed: int = 0,
        policy: str = "uniform",
        min_quality: Mapping[str, float] | None = None,
        max_repeats: int | None = None,
        loss_filter: bool = False,
        max_ignored: float = 0.5,
        hardness_cap: float = 3.0,
        augment: MixAugment | Mapping[str, Any] | None = None,
        real_classes: Sequence[str] | None = None,
        class_map: Mapping[str, str | int | None] | None = None,
        class_map_key: str = "class_map",
        reader_lease: bool = False,
        synthetic_transform: Callable[[Sample], Any] | None = None,
        real_to_sample: Callable[[Any], Sample] | None = None,
        sample_to_real: Callable[[Sample, Any], Any] | None = None,
        empty: str = "error",
        wait_timeout: float = 600.0,
    ) -> None:
        self.real = real
        self.schedule = RatioSchedule.parse(ratio)
        self.seed = int(seed)
        self.n_real = len(real)
        if self.n_real == 0:
            raise ValueError("the real dataset is empty: SyntheticMixDataset mixes into real data, give some")
        self.n_synthetic = synthetic_count(self.n_real, self.schedule.max)
        if empty not in ("error", "wait"):
            raise ValueError(f"empty={empty!r}: use 'error' (fail at start) or 'wait' (wait up to wait_timeout s)")
        self.augment = augment if isinstance(augment, MixAugment) or augment is None else MixAugment.from_dict(augment)
        self.synthetic_transform = synthetic_transform
        self.real_to_sample, self.sample_to_real = real_to_sample, sample_to_real
        self.state = _SharedState()
        self.plan = MixPlan()
        self._latest: dict[str, int] = {}
        self._generation = 0
        self._seen: tuple[int, dict[str, int], MixPlan] = (0, {}, MixPlan())
        self._fallback_warned = False
        self.pool: SyntheticPool | None = None
        self._lut: np.ndarray | None = None
        self._real_perm: tuple[int, np.ndarray] | None = None
        self._repeats: tuple[tuple[int, int, int] | None, int] = (None, 0)
        if self.n_synthetic == 0:
            return
        if synthetic is None:
            raise ValueError(f"ratio={self.schedule.max} > 0 needs a synthetic store; give its path")
        params = PoolParams(
            policy,
            dict(min_quality or {}),
            max_repeats,
            loss_filter=bool(loss_filter),
            max_ignored=max_ignored,
            hardness_cap=hardness_cap,
        )
        deadline = time.monotonic() + wait_timeout
        if empty == "wait" and not isinstance(synthetic, SampleStore):
            wait_for_store(synthetic, wait_timeout)
        self.pool = SyntheticPool(
            synthetic if isinstance(synthetic, SampleStore) else str(synthetic), params, lease=reader_lease
        )
        self._lut = self._class_lut(real_classes, class_map, class_map_key)
        self.refresh()
        if len(self.pool) == 0:
            self._wait_or_fail(empty, max(0.0, deadline - time.monotonic()), wait_timeout)
        self.plan.snapshots[0] = dict(self._latest)  # epoch 0 draws from the snapshot the start adopted
        self._generation = self.state.publish(self._latest, self.plan)

    # ------------------------------------------------------------------------------------------ set-up

    def _class_lut(
        self, real_classes: Sequence[str] | None, class_map: Mapping[str, str | int | None] | None, key: str
    ) -> np.ndarray | None:
        """Store id -> real id by class name (see synthaug.vocabulary.match_classes); None when nothing is checked."""
        assert self.pool is not None
        voc = self.pool.store.vocabulary
        if real_classes is None:
            if class_map:
                raise ValueError(f"{key} needs the real dataset's class names (real_classes) to map the store's to")
            return None
        lut = match_classes(voc, list(real_classes), class_map, key=key)
        moved = [(n, int(lut[i])) for i, n in enumerate(voc.names) if lut[i] != i]
        if moved:
            log.info(
                "synthaug: store classes -> real class ids: %s",
                ", ".join(f"{n}->{'ignore' if t == IGNORE_INDEX else t}" for n, t in moved),
            )
        return lut

    def _wait_or_fail(self, empty: str, left: float, timeout: float) -> None:
        assert self.pool is not None
        where = self.pool.store.root
        if empty == "wait":
            deadline = time.monotonic() + left
            log.info("synthaug: waiting up to %.0f s for samples in %s", timeout, where)
            while len(self.pool) == 0 and time.monotonic() < deadline:
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
                self.refresh()
            if len(self.pool):
                return
        raise EmptyPoolError(
            f"the synthetic store {where} has no samples"
            + (f" with quality >= {dict(self.pool.params.min_quality)}" if self.pool.params.min_quality else "")
            + f" after {timeout:.0f} s of waiting" * (empty == "wait")
            + ", but ratio > 0 needs some. Generate some (`synthaug generate --config gen.yaml --out "
            f"{where}`), set ratio=0, or pass empty='wait' with wait_timeout=SECONDS to wait for a producer."
        )

    # ------------------------------------------------------------------------------------------ the plan

    def __len__(self) -> int:
        return self.n_real + self.n_synthetic

    @property
    def epoch(self) -> int:
        """The epoch the hooks last set (what plain indices and the counters use)."""
        return int(self.state.clock[_SharedState.EPOCH])

    @property
    def iteration(self) -> int:
        return int(self.state.clock[_SharedState.ITERATION])

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's plan for plain indices (samplers and hooks call this; workers see it at once)."""
        self.state.clock[_SharedState.EPOCH] = int(epoch)

    def set_iteration(self, iteration: int) -> None:
        """Tell the ratio schedule where training is, for plain indices (the integrations' hooks call this)."""
        self.state.clock[_SharedState.ITERATION] = int(iteration)

    def follow(self, iteration: int, images_per_iteration: int) -> None:
        """Tell the mix where training is: the iteration (for ratio schedules) and the pass over the data it
        makes (the epoch of the draw, for loops that never call set_epoch). Hooks call this every iteration;
        indices from a planned sampler carry their own epoch and iteration instead."""
        self.set_iteration(iteration)
        layout = self.state.layout
        if layout is not None:  # the epoch of the iteration's first sample, as the planned sampler counts it
            self.set_epoch(layout.epoch(iteration * layout.batch_size, len(self)))
        else:
            self.set_epoch(iteration // max(1, len(self) // max(1, images_per_iteration)))

    def active_synthetic(self, iteration: int | None = None) -> int:
        """How many synthetic slots serve synthetic samples at `iteration` (all of them without a schedule)."""
        r = self.schedule(self.iteration if iteration is None else iteration)
        if r >= self.schedule.max:
            return self.n_synthetic
        return min(self.n_synthetic, round(r * len(self)))

    def locate(self, index: int, epoch: int | None = None, iteration: int | None = None) -> tuple[str, int]:
        """('real', real index) or ('synthetic', pool index) for `index`: a pure function of its arguments,
        the seed and the adopted snapshot."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a mix of {len(self)}")
        epoch = self.epoch if epoch is None else epoch
        if index < self.n_real:
            return "real", index
        k = index - self.n_real
        active = self.active_synthetic(iteration)
        if k >= active:
            return "real", int(self._real_permutation(epoch)[(k - active) % self.n_real])
        assert self.pool is not None
        return "synthetic", int(self.pool.assignment(self.n_synthetic, epoch, self.seed)[k])

    def _real_permutation(self, epoch: int) -> np.ndarray:
        """The seeded order in which surplus synthetic slots serve real samples in `epoch` (ratio schedules)."""
        if self._real_perm is None or self._real_perm[0] != epoch:
            self._real_perm = (epoch, np.random.default_rng([self.seed, epoch, 0xEA1]).permutation(self.n_real))
        return self._real_perm[1]

    def place(self, key: int) -> tuple[int, int, int]:
        """(index, epoch, iteration) of a dataset key: a planned sampler's tag carries them; a plain index
        takes the hooks' clock. Also adopts the snapshot that epoch draws from, if it is not held."""
        index, position = untag(key, len(self))
        clock = self.state.clock.tolist()  # one read of the shared clock per item: this is the loader's hot path
        layout = _SharedState.layout_of(clock)
        if position is None or layout is None:
            epoch, iteration = clock[_SharedState.EPOCH], clock[_SharedState.ITERATION]
        else:
            epoch, iteration = layout.epoch(position, len(self)), layout.iteration(position)
        self._hold(epoch, tagged=position is not None, clock=clock)
        return index, epoch, iteration

    # ------------------------------------------------------------------------------------------ the plan

    @property
    def planned(self) -> bool:
        """Whether a planned sampler feeds this mix (then growth is adopted at epoch boundaries only)."""
        return self.state.layout is not None

    def set_layout(self, layout: Layout) -> None:
        """Planned samplers call this: how stream positions map to epochs and iterations."""
        self.state.clock[_SharedState.BATCH] = layout.batch_size
        self.state.clock[_SharedState.WORLD] = layout.world_size
        self.state.clock[_SharedState.PER_EPOCH] = layout.per_epoch
        self.state.clock[_SharedState.BATCHES_PER_EPOCH] = layout.batches_per_epoch

    @property
    def start_position(self) -> int:
        """Where a planned sampler that runs in workers starts its stream (moved on resume, see resume_at)."""
        return int(self.state.clock[_SharedState.START])

    def resume_at(self, iteration: int) -> None:
        """A trainer that does not replay its data on resume (detectron2) starts the stream at `iteration`."""
        layout = self.state.layout
        self.state.clock[_SharedState.START] = iteration * (layout.batch_size if layout else 1)

    def plan_epoch(self, epoch: int) -> None:
        """Decide `epoch`'s snapshot unless the plan holds it: what the store holds now (rank 0's, broadcast).
        The main process calls this (every rank at the same point) before the epoch's first index leaves."""
        if self.pool is None or epoch in self.plan.snapshots:
            return
        self.plan.snapshots[epoch] = self._agreed_snapshot()
        self._generation = self.state.publish(self._latest, self.plan)

    def plan_ahead(self, iteration: int, iterations: int) -> None:
        """Plan every epoch up to `iterations` past `iteration` (for samplers that run in workers, which may
        prefetch that far ahead of the main process)."""
        layout = self.state.layout
        if layout is None:
            return
        # one whole epoch beyond the farthest position the workers may reach, so they never wait at a boundary
        last = layout.epoch((iteration + iterations + 1) * layout.batch_size, len(self)) + 1
        for epoch in range(max(self.plan.snapshots, default=-1) + 1, last + 1):
            self.plan_epoch(epoch)

    def plan_state(self) -> dict[str, Any]:
        """The plan as a checkpoint holds it (small: one snapshot per distinct store state)."""
        return {"seed": self.seed, "plan": self.plan.state_dict()}

    def load_plan_state(self, state: Mapping[str, Any]) -> None:
        """Restore a checkpoint's plan: every epoch it planned draws from the snapshot it drew from then."""
        try:
            saved = MixPlan.from_state(state.get("plan", {"runs": [], "changes": []}))
        except ValueError as err:
            log.warning("synthaug: the checkpoint's %s; this run plans its epochs afresh", err)
            return
        if int(state.get("seed", self.seed)) != self.seed:
            log.warning("synthaug: the checkpoint's mix seed %s differs from %s: its plan is not restored",
                        state.get("seed"), self.seed)  # fmt: skip
            return
        self.plan.snapshots.update(saved.snapshots)
        self._generation = self.state.publish(self._latest, self.plan)

    def _hold(self, epoch: int, tagged: bool = False, clock: list[int] | None = None) -> None:
        """Adopt the snapshot `epoch` draws from: the plan's once a planned sampler feeds the mix (for a plain
        index too, such as a wrapper's retry), else the latest published. `clock`: a read of the shared clock
        the caller already made."""
        if self.pool is None:
            return
        clock = clock if clock is not None else self.state.clock.tolist()
        if clock[_SharedState.GENERATION] != self._seen[0]:
            self._seen = self.state.read(self._seen[0]) or self._seen
        _, latest, plan = self._seen
        snapshot = latest
        if _SharedState.layout_of(clock) is not None:
            snapshot = plan.snapshots.get(epoch) or self._unplanned(epoch, tagged)
        if snapshot != self.pool.snapshot:
            self.pool.adopt(snapshot)

    def _unplanned(self, epoch: int, tagged: bool) -> dict[str, int]:
        """An epoch the plan does not hold. A tagged item in a worker, beyond the newest planned epoch, waits
        a little for the main process to plan it (it plans ahead of the workers); otherwise, or when the wait
        ends, the nearest planned epoch's snapshot is drawn from, and the item is counted as unplanned."""
        wait = tagged and torch.utils.data.get_worker_info() is not None
        deadline = time.monotonic() + (_PLAN_WAIT_S if wait else 0.0)
        while epoch > max(self._seen[2].snapshots, default=-1) and time.monotonic() < deadline:
            time.sleep(0.02)
            self._seen = self.state.read(self._seen[0]) or self._seen
        plan = self._seen[2]
        if epoch in plan.snapshots:
            return plan.snapshots[epoch]
        if tagged:
            self.state.counters[_proc_row()][COUNTERS.index("unplanned")] += 1
            if wait and not self._fallback_warned:
                log.warning("synthaug: epoch %d was not planned in time; it draws from the nearest planned", epoch)
                self._fallback_warned = True
        if not plan.snapshots:
            return self._seen[1]
        earlier = [e for e in plan.snapshots if e <= epoch]
        return plan.snapshots[max(earlier) if earlier else min(plan.snapshots)]

    # ------------------------------------------------------------------------------------------ the pool

    def refresh(self) -> int:
        """Adopt a new snapshot of the store now (rank 0's, broadcast to every rank) for plain indices; returns
        the pool size. Call it on every rank at the same iteration (the hooks do, without a planned sampler)."""
        if self.pool is None:
            return 0
        self._latest = self._agreed_snapshot()
        size = self.pool.adopt(self._latest)
        self._generation = self.state.publish(self._latest, self.plan)
        self._seen = (self._generation, dict(self._latest), MixPlan(dict(self.plan.snapshots)))
        return size

    def refresh_due(self, iteration: int, interval: int) -> bool:
        """Whether a hook should call refresh() at `iteration`: every `interval` iterations, unless a planned
        sampler feeds the mix (its store growth is adopted at epoch starts, as the plan decides)."""
        return not self.planned and iteration > 0 and iteration % interval == 0

    def _agreed_snapshot(self) -> dict[str, int]:
        """What the store holds now, as rank 0 sees it (every rank must call this at the same point)."""
        assert self.pool is not None
        snapshot = self.pool.current_snapshot()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            box = [snapshot]
            torch.distributed.broadcast_object_list(box, src=0)
            snapshot = box[0]
        return snapshot

    @property
    def pool_size(self) -> int:
        return len(self.pool) if self.pool is not None else 0

    # ------------------------------------------------------------------------------------------ items

    def __getitem__(self, key: int) -> Any:
        index, epoch, iteration = self.place(key)
        kind, j = self.locate(index, epoch, iteration)
        row = self.state.counters[_proc_row()]
        if kind == "real":
            row[0] += 1
            return self._real_item(index, j, epoch)
        row[1] += 1
        sample = self._read_synthetic(j, index, epoch, row)
        rng = np.random.default_rng([self.seed, epoch, index, 0xA06])
        if self.augment is not None:
            draw = self._drawer(rng, index, epoch, row)
            if self.augment.splice is not None:
                sample = self.augment.splice.grid(sample, rng, draw)
            if self.augment.blur is not None:
                sample = self.augment.blur(sample, rng)
        return self.synthetic_transform(sample) if self.synthetic_transform else sample

    def synthetic_example(self, tries: int = 8) -> Any | None:
        """The first readable pool sample as training gets it (classes mapped, transform applied, not augmented),
        uncounted: what start-up checks map once. None if the pool is empty or its first `tries` are unreadable."""
        for j in range(min(self.pool_size, tries)):
            assert self.pool is not None
            sample = self.pool.read(j)
            if sample is not None:
                sample = self._map_classes(sample)
                return self.synthetic_transform(sample) if self.synthetic_transform else sample
        return None

    def _real_item(self, index: int, j: int, epoch: int) -> Any:
        item = self.real[j]
        aug = self.augment
        if aug is None or not aug.to_real or self.real_to_sample is None or self.sample_to_real is None:
            return item
        rng = np.random.default_rng([self.seed, epoch, index, 0xA07])
        sample = self.real_to_sample(item)
        if aug.splice is not None and self.pool is not None and len(self.pool):
            sample = aug.splice.paste(sample, rng, self._drawer(rng, index, epoch, self.state.counters[_proc_row()]))
        if aug.blur is not None:
            sample = aug.blur(sample, rng)
        return self.sample_to_real(sample, item)

    def _drawer(self, rng: np.random.Generator, index: int, epoch: int, row: torch.Tensor):
        def draw(n: int) -> list[Sample]:
            assert self.pool is not None
            picks = self.pool.draw(rng, n)
            return [self._read_synthetic(int(p), index, epoch, row) for p in picks]

        return draw

    def _read_synthetic(self, j: int, index: int, epoch: int, row: torch.Tensor) -> Sample:
        """Pool sample j, or (if corrupt: skipped and counted) a seeded substitute."""
        assert self.pool is not None
        for attempt in range(_MAX_CORRUPT_RETRIES):
            sample = self.pool.read(j)
            if sample is not None:
                if self.pool.params.loss_filter:
                    row[4] += self.pool.ignored_area(j)
                    row[5] += int(np.count_nonzero(sample.mask != IGNORE_INDEX))
                return self._map_classes(sample)
            row[2] += 1
            log.warning("synthaug: skipped corrupt synthetic sample %s", self.pool.records[j]["id"])
            j = int(np.random.default_rng([self.seed, epoch, index, attempt, 0xC0]).integers(len(self.pool)))
        raise RuntimeError(
            f"{_MAX_CORRUPT_RETRIES} synthetic samples in a row could not be read in {self.pool.store.root} "
            f"(corrupt: {len(self.pool.store.stats.corrupt)}, permission denied: {len(self.pool.store.stats.denied)}): "
            f"run `synthaug verify {self.pool.store.root}` to see why, and `--repair` to quarantine corrupt ones"
        )

    def _map_classes(self, sample: Sample) -> Sample:
        return sample if self._lut is None else sample.relabelled(self._lut)

    # ------------------------------------------------------------------------------------------ counters

    def counters(self) -> dict[str, float]:
        """Served real and synthetic samples, corrupt samples skipped, pool size, repeats this epoch, and the share."""
        self._hold(self.epoch)  # the snapshot of the epoch being trained
        total = self.state.counters.sum(0).tolist()
        out: dict[str, float] = dict(zip(COUNTERS, total))
        out["pool_size"] = self.pool_size
        if self.pool is not None and len(self.pool) and self.n_synthetic:
            key = (self.epoch, self.active_synthetic(), self._generation)
            if self._repeats[0] != key:  # hooks ask every iteration; the plan changes only with these
                plan = self.pool.assignment(self.n_synthetic, self.epoch, self.seed)[: key[1]]
                self._repeats = (key, int(len(plan) - len(np.unique(plan))))
            out["repeats"] = self._repeats[1]
        served = out["served_real"] + out["served_synthetic"]
        out["synthetic_share"] = out["served_synthetic"] / served if served else math.nan
        if self.pool is not None and self.pool.params.loss_filter:
            seen = out["ignored_px"] + out["labelled_px"]
            out["ignored_share"] = out["ignored_px"] / seen if seen else 0.0
            out["filtered_out"] = self.pool.filtered_out
        return out

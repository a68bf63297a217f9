"""The mix plan: where in training each index is served, and which store snapshot each epoch draws from.

A planned sampler tags every index with its position in the rank's stream of samples (`tag`), so a
DataLoader worker learns the epoch and iteration of an item from its index alone, however far ahead it
prefetches, and without reading counters that the main process moves meanwhile. The snapshot of each
epoch is decided once, in the main process, when the first index of that epoch is planned; the
decisions (`MixPlan`) are published to workers through shared memory and saved in checkpoints, so a
resumed run draws every epoch it already planned from the same snapshot, and store growth is adopted
at epoch boundaries only.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


def tag(index: int, position: int, length: int) -> int:
    """`index` of a dataset of `length` items, tagged with its stream `position` (>= 0), as one int.

    An int survives every wrapper that calls int() on indices (detectron2's MapDataset does); indices below
    `length` are untagged and keep their plain meaning.
    """
    return index + length * (position + 1)


def untag(key: int, length: int) -> tuple[int, int | None]:
    """(index, stream position) of a key made by `tag`; (key, None) for a plain index."""
    key = int(key)
    if key < length:
        return key, None
    return key % length, key // length - 1


@dataclass(frozen=True)
class Layout:
    """How stream positions map to training: `batch_size` items per rank per iteration, `world_size` ranks.

    An endless stream (mmengine's InfiniteSampler, detectron2's TrainingSampler): position p of a rank's
    stream is global sample p * world_size, in epoch p * world_size // length and iteration p // batch_size
    (each rank takes one batch per iteration), whatever launcher runs the ranks. A finite sampler with an
    epoch (mmengine's DefaultSampler) gives `per_epoch` positions per rank per epoch, padding included, in
    `batches_per_epoch` batches; then the epoch and iteration are the sampler's own.
    """

    batch_size: int
    world_size: int
    per_epoch: int = 0
    batches_per_epoch: int = 0

    def epoch(self, position: int, length: int) -> int:
        if self.per_epoch:
            return position // self.per_epoch
        return position * self.world_size // length

    def iteration(self, position: int) -> int:
        if self.per_epoch:
            epoch, offset = divmod(position, self.per_epoch)
            return epoch * self.batches_per_epoch + offset // self.batch_size
        return position // self.batch_size


@dataclass
class MixPlan:
    """Each planned epoch's store snapshot ({segment: count}); a small value that checkpoints hold."""

    snapshots: dict[int, dict[str, int]] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe and compact: runs of epochs that share a snapshot ([first, last, k]), and the distinct
        snapshots each as its change from the one before ({segment: count}, None for a segment gone)."""
        runs: list[list[int]] = []
        changes: list[dict[str, int | None]] = []
        prev: dict[str, int] = {}
        for epoch, snap in sorted(self.snapshots.items()):
            if not changes or snap != prev:
                change: dict[str, int | None] = {k: v for k, v in snap.items() if prev.get(k) != v}
                change.update({k: None for k in prev if k not in snap})
                changes.append(change)
                prev = dict(snap)
            if runs and runs[-1][1] == epoch - 1 and runs[-1][2] == len(changes) - 1:
                runs[-1][1] = epoch
            else:
                runs.append([epoch, epoch, len(changes) - 1])
        return {"runs": runs, "changes": changes}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> MixPlan:
        """The plan a checkpoint saved; a malformed one raises ValueError saying what is wrong."""
        try:
            snaps: list[dict[str, int]] = []
            current: dict[str, int] = {}
            for change in state["changes"]:
                current = {**current, **{str(k): int(v) for k, v in change.items() if v is not None}}
                current = {k: v for k, v in current.items() if change.get(k, 0) is not None}
                snaps.append(current)
            plan = cls()
            for first, last, k in state["runs"]:
                for epoch in range(int(first), int(last) + 1):
                    plan.snapshots[epoch] = snaps[int(k)]
            return plan
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise ValueError(f"the synthaug mix plan is malformed ({err!r})") from None

    def since(self, epoch: int) -> MixPlan:
        """The epochs from `epoch` on (what still fits when the whole plan does not)."""
        return MixPlan({e: s for e, s in self.snapshots.items() if e >= epoch})


class PlannedMix(Protocol):
    """What planned samplers need of the mix (SyntheticMixDataset)."""

    def __len__(self) -> int: ...

    def set_layout(self, layout: Layout) -> None: ...

    def plan_epoch(self, epoch: int) -> None: ...


class PlannedBatchSampler:
    """Wraps a sampler (or a batch sampler) so every index in its batches is tagged with its stream position,
    and plans each epoch's snapshot in the main process before the first batch of that epoch leaves.

    The position starts at epoch * len(sampler) for a sampler that has an `epoch` (mmengine's DefaultSampler,
    set by the epoch loop); otherwise it goes on from where the previous iterator stopped (0 in a new
    process: mmengine replays an endless InfiniteSampler's stream from its start when it resumes).
    """

    def __init__(
        self,
        mix: PlannedMix,
        batch_size: int,
        sampler: Iterable[int] | None = None,
        batch_sampler: Iterable[list[int]] | None = None,
        drop_last: bool = False,
        world_size: int | None = None,
    ) -> None:
        if (sampler is None) == (batch_sampler is None):
            raise ValueError("PlannedBatchSampler: give exactly one of sampler= or batch_sampler=")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"PlannedBatchSampler: batch_size={batch_size!r} must be an integer >= 1")
        self.mix, self.batch_size, self.drop_last = mix, batch_size, drop_last
        self.sampler = sampler if sampler is not None else getattr(batch_sampler, "sampler", None)
        self.batch_sampler = batch_sampler
        world = world_size or current_world_size()
        if self._epoch_of_sampler() is not None:  # a finite sampler with epochs: its own epoch and iteration
            self.layout = Layout(batch_size, world, len(self.sampler), len(self))  # type: ignore[arg-type]
        else:
            self.layout = Layout(batch_size, world)
        self._next = 0  # where the last iterator stopped: a new one (the next epoch of a finite sampler) goes on
        mix.set_layout(self.layout)

    def _batches(self) -> Iterator[list[int]]:
        if self.batch_sampler is not None:
            yield from self.batch_sampler
            return
        batch: list[int] = []
        for index in self.sampler:  # type: ignore[union-attr]
            batch.append(int(index))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def _epoch_of_sampler(self) -> int | None:
        """The epoch of a finite sampler that has one (mmengine's DefaultSampler), else None."""
        epoch = getattr(self.sampler, "epoch", None)
        return epoch if isinstance(epoch, int) and hasattr(self.sampler, "__len__") else None

    def _start(self) -> int:
        """Where this iterator's stream starts: its epoch's first position, or where the last one stopped (an
        epoch loop whose sampler is never told the epoch still moves on)."""
        epoch = self._epoch_of_sampler()
        if epoch is not None:
            return max(epoch * len(self.sampler), self._next)  # type: ignore[arg-type]
        return self._next

    def __iter__(self) -> Iterator[list[int]]:
        length = len(self.mix)
        position = self._start()
        planned = -1
        for batch in self._batches():
            last = self.layout.epoch(position + len(batch) - 1, length)
            while planned < last:  # every epoch this batch reaches, decided before it leaves
                planned = max(planned + 1, self.layout.epoch(position, length))
                self.mix.plan_epoch(planned)
            yield [tag(int(i), position + k, length) for k, i in enumerate(batch)]
            position += len(batch)
            self._next = position

    def __len__(self) -> int:
        if self.batch_sampler is not None:
            return len(self.batch_sampler)  # type: ignore[arg-type]
        n = len(self.sampler)  # type: ignore[arg-type]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class PlannedSampler(torch.utils.data.Sampler):
    """Wraps an index sampler that runs inside DataLoader workers (detectron2 shards its sampler there): each
    index is tagged with its stream position, which starts at `mix`'s resume position. Epochs are planned
    by the main process ahead of the workers (SyntheticMixDataset.plan_ahead)."""

    def __init__(self, sampler: Iterable[int], mix: Any, batch_size: int, world_size: int | None = None) -> None:
        super().__init__()
        self.sampler, self.mix = sampler, mix
        self.layout = Layout(batch_size, world_size or current_world_size())
        mix.set_layout(self.layout)

    def __iter__(self) -> Iterator[int]:
        length = len(self.mix)
        position = self.mix.start_position
        for index in self.sampler:
            yield tag(int(index), position, length)
            position += 1

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]


def current_world_size() -> int:
    """Ranks of the default process group (1 outside distributed training)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1

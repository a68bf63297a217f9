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

#: Epochs whose snapshots stay published to workers (they prefetch a few batches ahead, never epochs behind).
PUBLISHED_EPOCHS = 32


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

    Position p of a rank's stream is global sample p * world_size, in epoch p * world_size // length and
    iteration p // batch_size (each rank takes one batch per iteration), whatever launcher runs the ranks.
    """

    batch_size: int
    world_size: int

    def epoch(self, position: int, length: int) -> int:
        return position * self.world_size // length

    def iteration(self, position: int) -> int:
        return position // self.batch_size

    def first_position(self, epoch: int, length: int) -> int:
        """The first stream position that lies in `epoch`."""
        return -(-epoch * length // self.world_size)


@dataclass
class MixPlan:
    """Each planned epoch's store snapshot ({segment: count}); a small value that checkpoints hold."""

    snapshots: dict[int, dict[str, int]] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe: snapshots stored once, epochs pointing at them (consecutive epochs usually share one)."""
        unique: list[dict[str, int]] = []
        epochs: dict[str, int] = {}
        for epoch, snap in sorted(self.snapshots.items()):
            if not unique or unique[-1] != snap:
                unique.append(dict(snap))
            epochs[str(epoch)] = len(unique) - 1
        return {"epochs": epochs, "snapshots": unique}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> MixPlan:
        """The plan a checkpoint saved; a malformed one fails with what is wrong."""
        try:
            snaps = [{str(k): int(v) for k, v in s.items()} for s in state["snapshots"]]
            return cls({int(e): dict(snaps[int(i)]) for e, i in state["epochs"].items()})
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
            raise ValueError(f"the checkpoint's synthaug mix plan is malformed ({err!r}); resume without it") from None

    def recent(self, count: int = PUBLISHED_EPOCHS) -> MixPlan:
        """The last `count` planned epochs (what workers may still be serving)."""
        keep = sorted(self.snapshots)[-count:]
        return MixPlan({e: self.snapshots[e] for e in keep})


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
        self.layout = Layout(batch_size, world_size or current_world_size())
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

    def _start(self) -> int:
        epoch = getattr(self.sampler, "epoch", None)
        if isinstance(epoch, int) and hasattr(self.sampler, "__len__"):
            return epoch * len(self.sampler)  # type: ignore[arg-type]
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

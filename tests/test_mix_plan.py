"""The mix plan: a planned sampler tags indices with their stream position, so DataLoader workers that prefetch
ahead serve exactly what one process would; each epoch's snapshot is decided once and checkpointed."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, RandomSampler

from synthaug.mix import SyntheticMixDataset
from synthaug.mix_plan import Layout, MixPlan, PlannedBatchSampler, tag, untag
from synthaug.sample import Sample
from synthaug.store import StoreWriter, create_store
from synthaug.toy.world import TOY_VOCABULARY, render_seed

BATCH = 4


def fill(store: Path, seeds, segment: str) -> None:
    with StoreWriter(store, segment, fsync=False) as w:
        for s in seeds:
            w.add(render_seed(s, 16).to_sample())


@pytest.fixture(scope="module")
def real() -> list[Sample]:
    return [render_seed(20_000 + i, 16).to_sample() for i in range(24)]


class Endless:
    """An endless seeded shuffling sampler, as mmengine's InfiniteSampler is (one rank)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.n, self.seed = n, seed

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        while True:
            yield from torch.randperm(self.n, generator=g).tolist()


def served(
    mix: SyntheticMixDataset, batches: int, workers: int, start: int = 0, plan: dict | None = None, batch: int = BATCH
) -> list[list[str]]:
    """The item ids of batches [start, batches) from a DataLoader with `workers` persistent workers. With `plan`,
    as mmengine resumes: the loader starts (its workers prefetch), then the checkpoint's plan is loaded, then
    the stream is replayed from its beginning."""
    sampler = PlannedBatchSampler(mix, batch, sampler=Endless(len(mix)))
    kwargs = dict(num_workers=workers, persistent_workers=workers > 0, collate_fn=lambda b: [s.id or s.seed for s in b])
    loader = iter(DataLoader(mix, batch_sampler=sampler, **kwargs))
    if plan is not None:
        mix.load_plan_state(plan)
    out = [next(loader) for _ in range(batches)]
    del loader
    return out[start:]


def test_tags_survive_int_and_map_to_epochs_and_iterations():
    assert untag(tag(7, 0, 10), 10) == (7, 0) and untag(tag(7, 123, 10), 10) == (7, 123) and untag(7, 10) == (7, None)
    layout = Layout(batch_size=4, world_size=2)  # 8 images per iteration over all ranks
    assert [layout.epoch(p, 20) for p in (0, 9, 10, 19, 20)] == [0, 0, 1, 1, 2]  # 10 positions per rank per epoch
    assert layout.iteration(11) == 2
    # A finite sampler with padding: 13 positions per rank per epoch in 4 batches (the last one short).
    finite = Layout(batch_size=4, world_size=4, per_epoch=13, batches_per_epoch=4)
    assert [finite.epoch(p, 50) for p in (12, 13, 26)] == [0, 1, 2]
    assert [finite.iteration(p) for p in (12, 13, 17)] == [3, 4, 5]


def test_plan_state_round_trips_and_a_malformed_one_is_named():
    plan = MixPlan({0: {"a": 3}, 1: {"a": 3}, 2: {"a": 5, "b": 1}, 3: {"b": 2}, 5: {"b": 2}})
    state = plan.state_dict()
    assert state["runs"] == [[0, 1, 0], [2, 2, 1], [3, 3, 2], [5, 5, 2]]  # runs of epochs, changes only
    assert state["changes"] == [{"a": 3}, {"a": 5, "b": 1}, {"b": 2, "a": None}]
    assert MixPlan.from_state(state) == plan
    with pytest.raises(ValueError, match="mix plan is malformed"):
        MixPlan.from_state({"runs": [[0, 0, 4]], "changes": []})


def test_persistent_workers_serve_what_one_process_serves_and_the_draw_moves_on_without_a_hook(tmp_path, real):
    store = create_store(tmp_path / "s", TOY_VOCABULARY)
    fill(store, range(30), "g")
    batches = 40  # 48 items per epoch (24 real, 24 synthetic slots): 12 batches per epoch, 3 epochs and more
    one = served(SyntheticMixDataset(real, store, ratio=0.5, seed=3), batches, workers=0)
    two = served(SyntheticMixDataset(real, store, ratio=0.5, seed=3), batches, workers=2)
    assert one == two
    synthetic = [[x for x in b if isinstance(x, str)] for b in one]
    epochs = [tuple(sorted(x for b in synthetic[e * 12 : (e + 1) * 12] for x in b)) for e in range(3)]
    assert all(len(e) == 24 for e in epochs) and len(set(epochs)) == 3


def test_growth_is_adopted_at_epoch_boundaries_and_a_resume_replays_it(tmp_path, real):
    store = create_store(tmp_path / "s", TOY_VOCABULARY)
    fill(store, range(10), "old")
    mix = SyntheticMixDataset(real, store, ratio=0.5, seed=5, max_repeats=3)
    sampler = PlannedBatchSampler(mix, BATCH, sampler=Endless(len(mix)))
    loader = iter(DataLoader(mix, batch_sampler=sampler, num_workers=2, collate_fn=lambda b: b))
    first = [next(loader) for _ in range(6)]  # epoch 0 is half done; the workers prefetch into it
    checkpoint = copy.deepcopy(mix.plan_state())
    fill(store, range(100, 140), "new")  # a producer adds samples mid-epoch
    rest = [next(loader) for _ in range(30)]
    del loader
    by_epoch: dict[int, list[Sample]] = {}
    for k, batch in enumerate(first + rest):
        by_epoch.setdefault(k // 12, []).extend(s for s in batch if s.id)
    assert all(s.seed < 100 for s in by_epoch[0]), "the pool grew inside epoch 0"
    assert any(s.seed >= 100 for s in by_epoch[1]), "epoch 1 did not adopt the grown store"
    for samples in by_epoch.values():  # the cap holds in every epoch, growth or not
        assert max(np.unique([s.id for s in samples], return_counts=True)[1]) <= 3
    # Resume from the checkpoint taken at batch 6: a new process, the store as it is now, the stream replayed.
    resumed = SyntheticMixDataset(real, store, ratio=0.5, seed=5, max_repeats=3)
    again = served(resumed, 36, workers=2, start=6, plan=checkpoint)
    assert again == [[s.id or s.seed for s in b] for b in rest]


def test_plain_indices_follow_set_epoch_without_a_planned_sampler(tmp_path, real):
    """Without a planned sampler the epoch is what set_epoch (the integrations' hooks) last said."""
    store = create_store(tmp_path / "s", TOY_VOCABULARY)
    fill(store, range(30), "g")
    mix = SyntheticMixDataset(real, store, ratio=0.5, seed=1)
    assert not mix.planned
    e0 = [mix[i].id for i in range(24, 48)]
    mix.set_epoch(1)
    assert [mix[i].id for i in range(24, 48)] != e0
    loader = DataLoader(mix, sampler=RandomSampler(mix), batch_size=BATCH, collate_fn=lambda b: b)
    assert sum(len(b) for b in loader) == len(mix)


def test_a_finite_sampler_goes_on_to_the_next_epoch_with_each_new_iterator(tmp_path, real):
    """A plain torch loop (a new iterator per epoch over RandomSampler) gets a new draw every epoch."""
    store = create_store(tmp_path / "s", TOY_VOCABULARY)
    fill(store, range(30), "g")
    mix = SyntheticMixDataset(real, store, ratio=0.5, seed=1)
    sampler = PlannedBatchSampler(mix, BATCH, sampler=RandomSampler(mix, generator=torch.Generator().manual_seed(0)))
    loader = DataLoader(mix, batch_sampler=sampler, collate_fn=lambda b: sorted(s.id for s in b if s.id))
    epochs = [tuple(sorted(x for b in loader for x in b)) for _ in range(3)]
    assert all(len(e) == 24 for e in epochs) and len(set(epochs)) == 3
    assert sorted(mix.plan.snapshots) == [0, 1, 2]


def test_a_resume_replays_a_long_plan_from_its_start_without_waiting(tmp_path, real):
    """50 epochs of 3 batches, a store that grows every 4 epochs, a checkpoint at batch 120 (epoch 40), and
    the replay from epoch 0: every replayed epoch is in the published plan, so no worker waits for one and
    nothing is drawn from an epoch it was not planned for."""
    store = create_store(tmp_path / "s", TOY_VOCABULARY)
    fill(store, range(30), "g0")
    mix = SyntheticMixDataset(real, store, ratio=0.5, seed=2)
    sampler = PlannedBatchSampler(mix, 16, sampler=Endless(len(mix)))
    loader = iter(
        DataLoader(mix, batch_sampler=sampler, num_workers=2, collate_fn=lambda b: [s.id or s.seed for s in b])
    )
    first = []
    for k in range(150):
        if k % 12 == 11 and k < 110:  # grown only before the checkpoint: after it, a resume sees the store as it is
            fill(store, range(1000 + k, 1002 + k), f"g{k}")
        first.append(next(loader))
        if k == 119:
            checkpoint = copy.deepcopy(mix.plan_state())
    del loader
    assert len(set(map(str, mix.plan.snapshots.values()))) > 8
    t0 = time.monotonic()
    resumed = SyntheticMixDataset(real, store, ratio=0.5, seed=2)
    again = served(resumed, 150, workers=2, start=120, plan=checkpoint, batch=16)
    assert again == first[120:] and resumed.counters()["unplanned"] == 0
    assert time.monotonic() - t0 < 120, "workers waited for epochs the plan held"


def test_a_plan_too_large_for_shared_memory_keeps_its_newest_epochs(monkeypatch):
    """Workers read the plan from a fixed shared buffer; a plan that outgrows it loses its oldest epochs (a
    worker that meets one draws from the nearest planned epoch and counts it), never the run."""
    import synthaug.mix as mix_module

    monkeypatch.setattr(mix_module, "_SNAPSHOT_BYTES", 4096)
    shared = mix_module._SharedState()
    plan = MixPlan({e: {f"segment-{k}": e for k in range(20)} for e in range(100)})
    shared.publish({"a": 1}, plan)
    _, latest, seen = shared.read(0)
    assert latest == {"a": 1} and max(seen.snapshots) == 99 and 0 not in seen.snapshots
    assert all(seen.snapshots[e] == plan.snapshots[e] for e in seen.snapshots)
    assert shared.read(int(shared.clock[shared.GENERATION])) is None  # nothing new: nothing re-read


class EpochSampler:
    """A finite sampler with an epoch, as mmengine's DefaultSampler: a seeded permutation per epoch, padded to a
    whole number of samples per rank (here: len(mix) + 2 padding positions)."""

    def __init__(self, n: int) -> None:
        self.n, self.epoch = n, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.epoch)).tolist()
        return iter(order + order[:2])

    def __len__(self) -> int:
        return self.n + 2


def test_an_epoch_loop_s_items_carry_its_own_epochs_and_iterations(tmp_path, real):
    """With DefaultSampler-like epochs (padding included, a short last batch) the items of the loop's epoch e
    are planned in epoch e, at the loop's own iterations; an epoch never told to the sampler still moves on."""
    store = create_store(tmp_path / "s", TOY_VOCABULARY)
    fill(store, range(30), "g")
    mix = SyntheticMixDataset(real, store, ratio=0.5, seed=1)
    sampler = EpochSampler(len(mix))  # 50 positions per epoch: 13 batches of 4, the last one of 2
    planned = PlannedBatchSampler(mix, BATCH, sampler=sampler)
    assert len(planned) == 13
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for b, keys in enumerate(planned):
            places = [mix.place(k)[1:] for k in keys]
            assert places == [(epoch, epoch * 13 + b)] * len(keys)
    assert sorted(mix.plan.snapshots) == [0, 1, 2]
    # A loop that never calls set_epoch: the stream goes on from where the last epoch stopped.
    sampler.set_epoch(0)
    assert {mix.place(k)[1] for k in next(iter(planned))} == {3}


@pytest.mark.parametrize(
    "state",
    [
        {"seed": 0, "plan": {"runs": [[0, 3, 7]], "changes": [{"g": 1}]}},  # points at a snapshot that is not there
        {"seed": 0, "plan": {"runs": "0-3", "changes": None}},  # wrong types
        {"seed": 0, "plan": {"runs": [[0, 0, 0]], "changes": [{"g": "many"}]}},  # a count that is no number
        {"seed": 99, "plan": {"runs": [[0, 0, 0]], "changes": [{"g": 1}]}},  # another run's seed
    ],
)
def test_a_malformed_or_foreign_checkpoint_plan_is_ignored_with_a_warning(tmp_path, real, state, caplog):
    """A resume never fails over the plan a checkpoint holds: the run keeps the plan it has, and says why."""
    store = create_store(tmp_path / "s", TOY_VOCABULARY)
    fill(store, range(10), "g")
    mix = SyntheticMixDataset(real, store, ratio=0.5, seed=0)
    before = copy.deepcopy(mix.plan)
    with caplog.at_level("WARNING", logger="synthaug.mix"):
        mix.load_plan_state(state)
    assert mix.plan == before and "synthaug" in caplog.text

"""The mix plan: a planned sampler tags indices with their stream position, so DataLoader workers that prefetch
ahead serve exactly what one process would; each epoch's snapshot is decided once and checkpointed."""

from __future__ import annotations

import copy
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


def served(mix: SyntheticMixDataset, batches: int, workers: int, start: int = 0) -> list[list[str]]:
    """The item ids of batches [start, batches) from a DataLoader with `workers` persistent workers (replaying
    the stream from its beginning, as mmengine does when it resumes)."""
    sampler = PlannedBatchSampler(mix, BATCH, sampler=Endless(len(mix)))
    kwargs = dict(num_workers=workers, persistent_workers=workers > 0, collate_fn=lambda b: [s.id or s.seed for s in b])
    loader = iter(DataLoader(mix, batch_sampler=sampler, **kwargs))
    out = [next(loader) for _ in range(batches)]
    del loader
    return out[start:]


def test_tags_survive_int_and_map_to_epochs_and_iterations():
    assert untag(tag(7, 0, 10), 10) == (7, 0) and untag(tag(7, 123, 10), 10) == (7, 123) and untag(7, 10) == (7, None)
    layout = Layout(batch_size=4, world_size=2)  # 8 images per iteration over all ranks
    assert [layout.epoch(p, 20) for p in (0, 9, 10, 19, 20)] == [0, 0, 1, 1, 2]  # 10 positions per rank per epoch
    assert layout.iteration(11) == 2 and layout.first_position(3, 20) == 30


def test_plan_state_round_trips_and_a_malformed_one_is_named():
    plan = MixPlan({0: {"a": 3}, 1: {"a": 3}, 2: {"a": 5, "b": 1}})
    state = plan.state_dict()
    assert len(state["snapshots"]) == 2 and MixPlan.from_state(state) == plan
    with pytest.raises(ValueError, match="mix plan is malformed"):
        MixPlan.from_state({"epochs": {"0": 4}, "snapshots": []})


def test_persistent_workers_serve_what_one_process_serves_and_the_draw_moves_on_without_a_hook(tmp_path, real):
    store = create_store(tmp_path / "s", TOY_VOCABULARY)
    fill(store, range(30), "g")
    batches = 40  # 48 items per epoch (24 real, 24 synthetic slots): 12 batches per epoch, 3 epochs and more
    one = served(SyntheticMixDataset(real, store, ratio=0.5, seed=3), batches, workers=0)
    two = served(SyntheticMixDataset(real, store, ratio=0.5, seed=3), batches, workers=2)
    assert one == two
    synthetic = [[x for x in b if isinstance(x, str)] for b in one]
    epochs = [sorted(x for b in synthetic[e * 12 : (e + 1) * 12] for x in b) for e in range(3)]
    assert all(len(e) == 24 for e in epochs) and epochs[0] != epochs[1] != epochs[2]


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
    resumed.load_plan_state(checkpoint)
    again = served(resumed, 36, workers=2, start=6)
    assert again == [[s.id or s.seed for s in b] for b in rest]


def test_an_unplanned_loader_keeps_the_hooks_clock(tmp_path, real):
    """Plain indices (no planned sampler) follow set_epoch, as before."""
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
    epochs = [sorted(x for b in loader for x in b) for _ in range(3)]
    assert all(len(e) == 24 for e in epochs) and epochs[0] != epochs[1] != epochs[2]
    assert sorted(mix.plan.snapshots) == [0, 1, 2]

"""SyntheticMixDataset: the plan, its determinism across workers/ranks/resume, the growing pool, policies, errors."""

from __future__ import annotations

import math
import re
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from synthaug.mix import RatioSchedule, SyntheticMixDataset, synthetic_count
from synthaug.pool import EmptyPoolError, PoolParams, SyntheticPool
from synthaug.sample import Sample
from synthaug.store import SampleStore, StoreWriter, create_store
from synthaug.toy.world import TOY_VOCABULARY, render_seed

NAMES = list(TOY_VOCABULARY.names)


def fill(store: Path, seeds, segment: str = "gen0", resume: bool = False, quality=None) -> None:
    with StoreWriter(store, segment, resume=resume, fsync=False) as w:
        for s in seeds:
            sample = render_seed(s, 16).to_sample()
            sample.quality = {"mean_confidence": (quality(s) if quality else 0.8)}
            w.add(sample)


@pytest.fixture
def store(tmp_path) -> Path:
    path = create_store(tmp_path / "store", TOY_VOCABULARY)
    fill(path, range(40))
    return path


@pytest.fixture(scope="module")
def real() -> list[Sample]:
    return [render_seed(10_000 + i, 16).to_sample() for i in range(200)]


def _ident(item) -> str:
    return item.id if item.id else f"real-{item.seed}"


def test_epoch_length_and_exact_share(store, real):
    """One epoch: every real index once plus round(n r / (1 - r)) synthetic slots.

    Derived tolerance: m = n r / (1 - r) + d with |d| <= 1/2, so the epoch's share m / (n + m)
    is within (1 - r) / (2 (n + m)) < 1 / (2 (n + m)) of r.
    """
    for r in (0.1, 0.3, 0.5, 0.77):
        ds = SyntheticMixDataset(real, store, ratio=r, seed=1)
        m = synthetic_count(len(real), r)
        assert len(ds) == len(real) + m
        kinds = Counter(ds.locate(i)[0] for i in range(len(ds)))
        assert kinds["real"] == len(real)
        assert abs(kinds["synthetic"] / len(ds) - r) <= 1 / (2 * len(ds))
        assert sorted(ds.locate(i)[1] for i in range(len(real))) == list(range(len(real)))


def test_served_share_converges_under_a_shuffling_loader(store, real):
    """Counted by the dataset itself across 2 workers over 3 shuffled epochs: the share is the epoch share
    exactly, and any window of w items stays within 4 hypergeometric sigmas of r."""
    r = 0.3
    ds = SyntheticMixDataset(real, store, ratio=r, seed=2, augment=None)
    loader = DataLoader(
        ds,
        batch_size=None,
        shuffle=True,
        num_workers=2,
        collate_fn=lambda x: x,
        generator=torch.Generator().manual_seed(0),
    )
    kinds = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        kinds += [item.id is not None for item in loader]
    c = ds.counters()
    n, total = len(ds), 3 * len(ds)
    assert c["served_real"] + c["served_synthetic"] == total
    assert c["served_synthetic"] == 3 * synthetic_count(len(real), r)
    w = 100
    sigma = math.sqrt(r * (1 - r) / w * (n - w) / (n - 1))
    for start in range(0, n - w, 50):
        assert abs(np.mean(kinds[start : start + w]) - r) <= 4 * sigma + 1 / (2 * n)


def test_ratio_zero_is_the_real_dataset_unchanged(real):
    ds = SyntheticMixDataset(real, None, ratio=0)
    assert len(ds) == len(real) and all(ds[i] is real[i] for i in range(len(real)))


def test_linear_schedule_decays_the_served_share(store, real):
    ds = SyntheticMixDataset(real, store, ratio=dict(type="linear", start=0.5, end=0.0, iterations=100), seed=3)
    shares = []
    for it in (0, 50, 100, 500):
        ds.set_iteration(it)
        shares.append(np.mean([ds.locate(i)[0] == "synthetic" for i in range(len(ds))]))
    assert shares[0] == pytest.approx(0.5, abs=1 / len(ds)) and shares[1] == pytest.approx(0.25, abs=1 / len(ds))
    assert shares[2] == shares[3] == 0.0
    assert RatioSchedule.parse(0.2)(10**9) == 0.2


def test_warmup_serves_real_only_then_the_schedule(store, real):
    ds = SyntheticMixDataset(real, store, ratio=dict(type="constant", ratio=0.4, warmup=200), seed=3)
    for it, share in ((0, 0.0), (199, 0.0), (200, 0.4), (10**6, 0.4)):
        ds.set_iteration(it)
        served = np.mean([ds.locate(i)[0] == "synthetic" for i in range(len(ds))])
        assert served == pytest.approx(share, abs=1 / len(ds)), it
    linear = RatioSchedule.parse(dict(type="linear", start=0.6, end=0.2, iterations=100, warmup=50))
    assert [linear(i) for i in (0, 49, 50, 100, 150, 999)] == pytest.approx([0, 0, 0.6, 0.4, 0.2, 0.2])
    for bad in (dict(type="constant", ratio=0.4, warmup=-1), dict(type="constant", warmup=5), dict(type="step")):
        with pytest.raises(ValueError, match=r"warmup|give a number"):
            RatioSchedule.parse(bad)


def test_same_plan_across_workers_instances_and_resume(store, real):
    def items(ds, workers):
        loader = DataLoader(
            ds, batch_size=None, num_workers=workers, collate_fn=lambda x: x, persistent_workers=workers > 0
        )
        out = []
        for epoch in (0, 1):
            ds.set_epoch(epoch)
            out.append([(_ident(x), x.image.tobytes()) for x in loader])
        return out

    aug = {"splice": {"p_grid": 0.5}, "blur": {"p_gaussian": 0.5}}
    a = items(SyntheticMixDataset(real[:60], store, ratio=0.4, seed=7, augment=aug), 0)
    b = items(SyntheticMixDataset(real[:60], store, ratio=0.4, seed=7, augment=aug), 2)
    assert a == b
    assert a[0] != a[1]  # another epoch, another draw
    resumed = SyntheticMixDataset(real[:60], store, ratio=0.4, seed=7, augment=aug)
    resumed.set_epoch(1)
    assert [(_ident(resumed[i]), resumed[i].image.tobytes()) for i in range(len(resumed))] == a[1]
    other = SyntheticMixDataset(real[:60], store, ratio=0.4, seed=8)
    assert [other.locate(i) for i in range(len(other))] != [resumed.locate(i, epoch=0) for i in range(len(other))]


def test_pool_grows_and_persistent_workers_follow(store, real):
    ds = SyntheticMixDataset(real[:30], store, ratio=0.5, seed=0, augment=None)
    loader = DataLoader(ds, batch_size=None, num_workers=2, persistent_workers=True, collate_fn=lambda x: x)
    first = {x.id for x in loader if x.id}
    assert all(int(i.rsplit("-", 1)[1]) < 40 for i in first)
    fill(store, range(40, 200), resume=True)
    assert ds.refresh() == 200 and ds.pool_size == 200
    second = {x.id for x in loader if x.id}
    assert any(int(i.rsplit("-", 1)[1]) >= 40 for i in second)  # the live workers adopted the new snapshot


def _rank_proc(rank: int, world: int, init: str, store: str, out: str) -> None:
    import json

    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    real = [render_seed(10_000 + i, 16).to_sample() for i in range(50)]
    ds = SyntheticMixDataset(real, store, ratio=0.5, seed=5)
    torch.distributed.barrier()  # both ranks hold 40 samples
    if rank == 0:  # rank 0 sees samples that rank 1's last refresh has not seen
        fill(Path(store), range(40, 60), resume=True)
    ds.refresh()
    plan = [ds.locate(i) for i in range(len(ds))]
    Path(out, f"rank{rank}.json").write_text(json.dumps({"pool": ds.pool_size, "plan": plan}))
    torch.distributed.destroy_process_group()


def test_two_ranks_adopt_rank_zeros_snapshot(store, tmp_path):
    import json

    init = f"file://{tmp_path / 'pg'}"
    torch.multiprocessing.spawn(_rank_proc, args=(2, init, str(store), str(tmp_path)), nprocs=2)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["pool"] == r1["pool"] == 60 and r0["plan"] == r1["plan"]


def test_empty_store_fails_clearly_or_waits(tmp_path, real):
    path = create_store(tmp_path / "empty", TOY_VOCABULARY)
    with pytest.raises(EmptyPoolError, match=r"has no samples.*synthaug generate.*empty='wait'"):
        SyntheticMixDataset(real, path, ratio=0.2)
    writer = threading.Timer(1.0, fill, args=(path, range(3)))
    writer.start()
    t0 = time.monotonic()
    ds = SyntheticMixDataset(real, path, ratio=0.2, empty="wait", wait_timeout=30)
    # It stops waiting at the first published sample; the writer may not have written all three yet.
    assert ds.pool_size >= 1 and time.monotonic() - t0 >= 0.9
    writer.join()
    ds.refresh()
    assert ds.pool_size == 3
    with pytest.raises(EmptyPoolError, match="after 1 s of waiting"):
        SyntheticMixDataset(
            real, create_store(tmp_path / "e2", TOY_VOCABULARY), ratio=0.2, empty="wait", wait_timeout=1
        )


def test_corrupt_samples_are_skipped_and_counted(store, real):
    rec = SampleStore(store).records[3]
    (store / rec["image"]).write_bytes(b"not a png")
    ds = SyntheticMixDataset(real[:100], store, ratio=0.5, seed=0, augment=None)
    served = [ds[i] for i in range(len(ds))]
    assert all(isinstance(s, Sample) for s in served)
    assert rec["id"] not in {s.id for s in served}
    c = ds.counters()
    assert c["corrupt_skipped"] >= 1 and rec["id"] in ds.pool.corrupt


def test_vocabulary_mismatch_is_refused_with_a_diff_and_the_key_to_set(store, real):
    other = ["background", "ball", "box", "pyramid"]
    with pytest.raises(ValueError) as err:
        SyntheticMixDataset(real, store, ratio=0.2, real_classes=other, class_map_key="SYNTHAUG.CLASS_MAP")
    text = str(err.value)
    assert text.startswith("class vocabularies differ: 3 of the store's 4 classes")
    for index, ours, theirs in [(1, "circle", "ball"), (2, "square", "box"), (3, "triangle", "pyramid")]:
        assert re.search(rf"\n\s+{index}\s+'{ours}'\s+'{theirs}'", text), text  # one diff row per unmatched class
    assert "Set SYNTHAUG.CLASS_MAP" in text and "SYNTHAUG.CLASS_MAP={'circle': 'ball'" in text
    with pytest.raises(ValueError, match=r"(?s)1 of the store's 4 classes.*'triangle'\s+'pyramid'"):
        SyntheticMixDataset(real, store, ratio=0.2, real_classes=other, class_map={"circle": "ball", "square": 2})
    with pytest.raises(ValueError, match=r"class_map\['circle'\]='bal' names no class of the real dataset.*'ball'"):
        SyntheticMixDataset(real, store, ratio=0.2, real_classes=other, class_map={"circle": "bal"})
    with pytest.raises(ValueError, match=r"class_map names 'sphere', which is not a class of the store"):
        SyntheticMixDataset(real, store, ratio=0.2, real_classes=other, class_map={"sphere": "ball"})


def test_classes_are_matched_by_name_into_the_real_id_space(store, real):
    """Reordered, differently spelt and mapped classes: every synthetic pixel and instance carries the real id."""
    raw = SyntheticMixDataset(real, store, ratio=0.5, augment=None, seed=3)
    spelt = ["Triangle ", "SQUARE", "circle", " Background"]  # reversed order, other case and space
    mapped = SyntheticMixDataset(real, store, ratio=0.5, augment=None, seed=3, real_classes=spelt)
    expected = np.array([3, 2, 1, 0] + [255] * 252, np.uint8)  # store id -> real id
    for i in range(len(real), len(raw)):
        a, b = raw[i], mapped[i]
        assert a.id == b.id
        assert np.array_equal(b.mask, expected[a.mask])
        assert [x.class_id for x in b.instances] == [int(expected[x.class_id]) for x in a.instances]
    # A store background the real dataset lacks is ignored; class_map merges and ignores.
    merged = SyntheticMixDataset(
        real, store, ratio=0.5, augment=None, seed=3, real_classes=["thing"],
        class_map={"circle": "thing", "square": 0, "triangle": None},
    )  # fmt: skip
    lut = np.array([255, 0, 0, 255] + [255] * 252, np.uint8)
    for i in range(len(real), len(raw)):
        a, b = raw[i], merged[i]
        assert np.array_equal(b.mask, lut[a.mask])
        assert [x.class_id for x in b.instances] == [0 for x in a.instances if x.class_id in (1, 2)]
    SyntheticMixDataset(real, store, ratio=0.2, real_classes=NAMES)  # the same names pass


def test_a_class_matching_two_real_classes_is_refused(store, real):
    with pytest.raises(ValueError, match=r"store class 'circle' matches several classes"):
        SyntheticMixDataset(real, store, ratio=0.2, real_classes=["background", "circle", "Circle", "square", "x"])


def test_reading_the_mix_writes_nothing_into_the_store(store, real):
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*")}
    ds = SyntheticMixDataset(real, store, ratio=0.5, augment=None)
    [ds[i] for i in range(len(real), len(ds))]
    ds.refresh()
    assert {p: p.stat().st_mtime_ns for p in store.rglob("*")} == before
    leased = SyntheticMixDataset(real, store, ratio=0.5, augment=None, reader_lease=True)
    assert leased.pool_size and any((store / "readers").iterdir())  # opt-in: a rolling producer honours it


def test_policies_and_filters(tmp_path):
    path = create_store(tmp_path / "s", TOY_VOCABULARY)
    fill(path, range(60), quality=lambda s: 0.2 + 0.01 * s)
    draws = {}
    for policy in ("uniform", "fresh", "quality", "class_balanced"):
        pool = SyntheticPool(SampleStore(path), PoolParams(policy))
        pool.adopt(pool.current_snapshot())
        draws[policy] = Counter(pool.assignment(6000, 0, 0).tolist())
    newer = range(30, 60)
    share_new = {p: sum(d[i] for i in newer) / 6000 for p, d in draws.items()}
    assert abs(share_new["uniform"] - 0.5) < 0.05
    assert share_new["fresh"] > 0.8 and share_new["quality"] > 0.6  # newer seeds have higher quality here
    recs = SampleStore(path).records
    rare = min(range(1, 4), key=lambda c: sum(c in r["classes"] for r in recs))
    with_rare = [i for i, r in enumerate(recs) if rare in r["classes"]]
    per = lambda p: sum(draws[p][i] for i in with_rare) / 6000  # noqa: E731
    assert per("class_balanced") > per("uniform") + 0.05

    capped = SyntheticPool(SampleStore(path), PoolParams(max_repeats=2, min_quality={"mean_confidence": 0.5}))
    assert capped.adopt(capped.current_snapshot()) == 30  # seeds 30..59 clear 0.5
    plan = capped.assignment(55, epoch=0, seed=0)
    assert max(Counter(plan.tolist()).values()) <= 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(ratio=1.0), "ratio=1.0 must be in \\[0, 1\\)"),
        (dict(policy="newest"), "policy='newest' is unknown"),
        (dict(max_repeats=0), "max_repeats=0 must be >= 1"),
        (dict(empty="block"), "empty='block'"),
        (dict(ratio={"type": "cosine"}), "give a number, dict\\(type='constant'"),
        (dict(augment={"splice": {"p": 0.5}}), "augment.splice: .*unexpected keyword argument 'p'"),
    ],
)
def test_bad_arguments_fail_at_start(store, real, kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticMixDataset(real, store, **kwargs)


def test_paste_onto_real_items_when_the_mix_can_convert_them(store, real):
    ds = SyntheticMixDataset(
        real[:40],
        store,
        ratio=0.2,
        seed=0,
        augment={"splice": {"p_grid": 0, "p_paste": 1.0}, "blur": None, "to_real": True},
        real_to_sample=lambda item: item,
        sample_to_real=lambda sample, item: sample,
    )
    served = [ds[i] for i in range(40)]
    changed = [i for i, s in enumerate(served) if not np.array_equal(s.mask, real[i].mask)]
    assert len(changed) >= 20  # every real item got a paste; most pastes land inside the image
    for i in changed:
        assert served[i].image.shape == real[i].image.shape and "paste" in served[i].fingerprint
    plain = SyntheticMixDataset(real[:40], store, ratio=0.2, seed=0, augment={"to_real": False})
    assert all(plain[i] is real[i] for i in range(40))  # synthetic-only by default


def test_capped_draw_is_fair_on_a_large_pool():
    """20,000 samples, cap 3, 8,000 slots (the README's max_repeats=3): no corner of the pool is favoured.

    With keys u ** (1 / w) most keys underflowed to 0 and the slots filled in index order: 27% of picks came
    from the oldest 10% of the pool and 82% of epoch 0's samples came back in epoch 1.
    """
    from synthaug.pool import capped_draw

    n, slots = 20_000, 8_000
    weights = np.full(n, 1.0 / n)
    draws = [capped_draw(weights, slots, 3, np.random.default_rng([0, epoch, 0x5A17])) for epoch in range(2)]
    oldest = float(np.mean(draws[0] < n // 10))
    assert 0.1 / 1.5 < oldest < 0.1 * 1.5, oldest
    # Epoch to epoch, a sample of epoch 0 comes back about as often as with independent draws: 1 - exp(-m/n).
    overlap = len(np.intersect1d(draws[0], draws[1])) / len(np.unique(draws[0]))
    expected = 1 - math.exp(-slots / n)  # 0.33
    assert abs(overlap - expected) < 0.05, (overlap, expected)
    assert np.bincount(draws[0], minlength=n).max() <= 3
    # Weighted: a sample of twice the weight is picked about twice as often (8,000 slots, cap not binding).
    w = np.where(np.arange(n) < n // 2, 2.0, 1.0)
    picks = capped_draw(w / w.sum(), slots, 3, np.random.default_rng(1))
    ratio = np.mean(picks < n // 2) / np.mean(picks >= n // 2)
    assert 1.7 < ratio < 2.3, ratio


def test_store_names_that_collide_once_normalised_are_refused(tmp_path, real):
    from synthaug.vocabulary import ClassVocabulary, match_classes

    vocab = ClassVocabulary(("background", "Car", "car"), ((0, 0, 0), (1, 1, 1), (2, 2, 2)))
    with pytest.raises(ValueError, match="'Car' and 'car' are the same name"):
        match_classes(vocab, ["car", "truck"], {"Car": None})  # used to map the *other* 'car' silently
    toy = ClassVocabulary(tuple(NAMES), TOY_VOCABULARY.palette)
    with pytest.raises(ValueError, match="the keys of class_map 'circle' and 'Circle'"):
        match_classes(toy, NAMES, {"circle": 1, "Circle": None})
    with pytest.raises(ValueError, match="300 classes; synthetic labels are 8-bit"):
        match_classes(toy, [f"c{i}" for i in range(300)], {"circle": 1, "square": 2, "triangle": 3})

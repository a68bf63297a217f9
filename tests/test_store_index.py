"""Segment indexes: written by the writer on close and by `synthaug index`, used by readers (checked by counters
and by garbling what an index makes unnecessary to parse), never trusted when stale, torn, foreign or a link,
shared by forked DataLoader workers, and giving the pool the same records and weights as the manifests do."""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from test_store import _fill
from test_store_repair import _as_nobody

from synthaug.cli import main as cli
from synthaug.pool import PoolParams, SyntheticPool
from synthaug.store import (
    MANIFEST,
    QUARANTINE,
    RETIRED_KEY,
    SEGMENTS,
    SampleStore,
    StoreError,
    StoreWriter,
    append_log,
    create_store,
    retire,
)
from synthaug.store_index import INDEX_FILE, INDEX_VERSION, MAGIC, index_segment
from synthaug.store_ops import index_store, stats, verify
from synthaug.toy.world import TOY_VOCABULARY, render_seed


def _index(path: Path, seg: str = "w0") -> Path:
    return path / SEGMENTS / seg / INDEX_FILE


def _ids(store: SampleStore) -> list[str]:
    return [r["id"] for r in store.records]


def test_writer_writes_the_index_on_close_and_readers_use_it_without_parsing(tmp_path):
    path = _fill(tmp_path / "s", range(24))
    assert _index(path).is_file()
    assert oct(_index(path).stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # permissions per umask
    store = SampleStore(path)
    assert store.stats.indexed == 24 and store.stats.parsed == 0 and len(store) == 24
    want = [f"w0-{i:08d}" for i in range(24)]
    assert _ids(store) == want and store.snapshot() == {"w0": 24, RETIRED_KEY: 0}
    sample = store.read(5)
    assert sample.id == want[5] and sample.seed == 5 and np.array_equal(sample.image, render_seed(5, 32).image)
    # Garble the start of the manifest (beyond the checksummed tail): a reader that parsed it would lose those
    # records; one that uses the index keeps every id, and reading a garbled record's sample is refused.
    manifest = path / SEGMENTS / "w0" / MANIFEST
    data = bytearray(manifest.read_bytes())
    assert len(data) > 3 * 4096
    first = data.index(b"\n")
    data[2:first] = b"#" * (first - 2)
    manifest.write_bytes(bytes(data))
    store = SampleStore(path)
    assert _ids(store) == want and store.stats.parsed == 0 and not store.stats.problems
    assert store.try_read(0) is None and "changed since it was checked" in store.stats.corrupt[want[0]]
    assert store.try_read(5) is not None
    unindexed = SampleStore(path, index=False)  # what the index spared: parsing the garbled line
    assert len(unindexed) == 23 and unindexed.stats.bad_lines == 1


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_stale_index_gives_every_record_and_the_reader_parses_only_the_tail(tmp_path):
    path = _fill(tmp_path / "s", range(5))
    before = _index(path).read_bytes()
    open_reader = SampleStore(path)
    with StoreWriter(path, segment="w0", resume=True, fsync=False, index=False) as w:
        for s in range(5, 8):
            w.add(render_seed(s, 32).to_sample())
    assert _index(path).read_bytes() == before  # the index covers the first 5 records only
    store = SampleStore(path)
    assert _ids(store) == [f"w0-{i:08d}" for i in range(8)]
    assert store.stats.indexed == 5 and store.stats.parsed == 3 and not store.stats.problems
    assert store.read(7).seed == 7
    assert open_reader.refresh() == 3 and _ids(open_reader) == _ids(store)
    assert verify(path).clean  # an index that covers a prefix is not stale
    with StoreWriter(path, segment="w0", resume=True, fsync=False):  # closing again extends the index
        pass
    store = SampleStore(path)
    assert store.stats.indexed == 8 and store.stats.parsed == 0


def _torn(data: bytes) -> bytes:
    return data[: len(data) // 2]


def _garbage(data: bytes) -> bytes:
    return random.Random(0).randbytes(len(data))


def _foreign_version(data: bytes) -> bytes:
    n = int.from_bytes(data[len(MAGIC) : len(MAGIC) + 8], "little")
    header = data[len(MAGIC) + 8 : len(MAGIC) + 8 + n]
    changed = header.replace(f'"version":{INDEX_VERSION},'.encode(), b'"version":9,')
    assert changed != header and len(changed) == len(header)
    return data.replace(header, changed)


def _flipped_bit(data: bytes) -> bytes:
    out = bytearray(data)
    out[-3] ^= 0x10
    return bytes(out)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (_torn, "torn"),
        (_garbage, "does not start as a synthaug index"),
        (_foreign_version, "index format version 9"),
        (_flipped_bit, "CRC-32"),
        (lambda data: b"", "too short"),
    ],
)
def test_bad_index_gives_every_record_and_a_problem_and_repair_rewrites_it(tmp_path, damage, says):
    path = _fill(tmp_path / "s", range(6))
    index = _index(path)
    index.write_bytes(damage(index.read_bytes()))
    store = SampleStore(path)
    assert _ids(store) == [f"w0-{i:08d}" for i in range(6)] and store.stats.indexed == 0
    assert [(p.file, p.kind) for p in store.stats.problems] == [(f"{SEGMENTS}/w0/{INDEX_FILE}", "bad index")]
    assert says in store.stats.problems[0].message
    assert store.refresh() == 0 and len(store.stats.problems) == 1  # reported once
    report = verify(path)
    assert not report.clean and f"{SEGMENTS}/w0/{INDEX_FILE}: bad index" in report.summary()
    repaired = verify(path, repair=True)
    assert not repaired.remaining and "segment w0: index written from its manifest" in repaired.actions
    store = SampleStore(path)
    assert store.stats.indexed == 6 and not store.stats.problems and verify(path).clean


def test_index_that_is_a_link_or_foreign_is_refused(tmp_path):
    path = _fill(tmp_path / "s", range(4))
    _fill(tmp_path / "other", range(4, 9), segment="w0")  # same segment name, other records
    outside = tmp_path / "outside.index"
    shutil.copyfile(_index(tmp_path / "other"), outside)
    _index(path).unlink()
    _index(path).symlink_to(outside)  # an index outside the store, through a link
    store = SampleStore(path)
    assert [r["seed"] for r in store.records] == [0, 1, 2, 3] and store.stats.indexed == 0
    assert "symbolic link" in store.stats.problems[0].message
    verify(path, repair=True)  # replaces the link itself, never what it points to
    assert not _index(path).is_symlink() and outside.read_bytes() == _index(tmp_path / "other").read_bytes()
    assert SampleStore(path).stats.indexed == 4
    _index(path).unlink()
    shutil.copyfile(outside, _index(path))  # a real file, but another manifest's index
    store = SampleStore(path)
    assert [r["seed"] for r in store.records] == [0, 1, 2, 3] and store.stats.indexed == 0
    assert store.stats.problems[0].kind == "bad index"
    _index(path).unlink()
    _index(path).mkdir()  # not a file at all
    store = SampleStore(path)
    assert len(store) == 4 and "not a plain file" in store.stats.problems[0].message


def test_bad_lines_of_an_indexed_segment_are_still_reported_and_blanking_them_rewrites_the_index(tmp_path):
    path = _fill(tmp_path / "s", range(3))
    manifest = path / SEGMENTS / "w0" / MANIFEST
    with open(manifest, "ab") as f:
        f.write(b"not json\n")
    with StoreWriter(path, segment="w0", resume=True, fsync=False) as w:
        w.add(render_seed(3, 32).to_sample())
    store = SampleStore(path)
    assert store.stats.indexed == 4 and store.stats.parsed == 0 and store.stats.bad_lines == 1
    assert [(p.file, p.line, p.kind) for p in store.stats.problems] == [(f"{SEGMENTS}/w0/{MANIFEST}", 4, "bad line")]
    assert [p.line for p in verify(path).problems] == [4]  # the same, from the manifest itself
    report = verify(path, repair=True)
    assert "segment w0: index written from its manifest" in report.actions and not report.remaining
    store = SampleStore(path)
    assert store.stats.indexed == 4 and not store.stats.problems and verify(path).clean


def test_verify_reports_an_index_that_disagrees_with_its_manifest(tmp_path):
    path = _fill(tmp_path / "s", range(12))
    manifest = path / SEGMENTS / "w0" / MANIFEST
    data = manifest.read_bytes()
    first = data.index(b"\n")
    manifest.write_bytes(b" " * first + data[first:])  # line 1 blanked after the index was written
    report = verify(path)
    assert any(p.kind == "stale index" and "more than the manifest holds" in p.message for p in report.problems)
    verify(path, repair=True)
    store = SampleStore(path)
    assert store.stats.indexed == 11 and verify(path).clean


def test_synthaug_index_writes_sealed_segments_only_and_a_read_only_store_opens_without(capsys):
    base = Path(tempfile.mkdtemp(prefix="synthaug-index-"))  # under /tmp, which other users may enter
    try:
        os.chmod(base, 0o755)
        path = base / "s"
        create_store(path, TOY_VOCABULARY)
        for seg in ("a", "b"):
            with StoreWriter(path, segment=seg, fsync=False, index=False) as w:  # as a crashed writer leaves it
                for s in range(3):
                    w.add(render_seed(s, 32).to_sample())
        live = StoreWriter(path, segment="c", fsync=False)
        live.add(render_seed(9, 32).to_sample())
        try:
            assert verify(path).unindexed == ["a", "b"]
            assert cli(["index", str(path)]) == 0
            out = capsys.readouterr().out
            assert "indexed 2 segment(s); 0 already up to date" in out and "segment c: its writer is live" in out
            assert _index(path, "a").is_file() and not _index(path, "c").exists()
            assert index_store(path).fresh == ["a", "b"]
        finally:
            live.close()
        store = SampleStore(path)
        assert store.stats.indexed == 7 and len(store) == 7
        _index(path, "a").unlink()
        for folder, _, files in os.walk(path):  # read-only for everyone but root
            os.chmod(folder, 0o555)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o444)
        SampleStore(path)  # the parent imports what the child needs

        def reader() -> dict:
            store = SampleStore(path)
            try:
                index_store(path)
                refused = ""
            except StoreError as err:
                refused = str(err)
            return {"n": len(store), "indexed": store.stats.indexed, "seed": store.read(0).seed, "refused": refused}

        if os.geteuid() == 0:
            seen = _as_nobody(reader)
            assert seen.get("error") is None, seen
            assert seen["n"] == 7 and seen["indexed"] == 4 and seen["seed"] == 0
            assert "permission denied" in seen["refused"]
    finally:
        for folder, _, _ in os.walk(base):
            os.chmod(folder, 0o755)
        shutil.rmtree(base, ignore_errors=True)


def test_retired_and_quarantined_records_stay_out_with_the_index(tmp_path):
    path = _fill(tmp_path / "s", range(8))
    snap = SampleStore(path).snapshot()
    retire(path, ["w0-00000001", "w0-00000002"])
    append_log(path, QUARANTINE, (json.dumps({"id": "w0-00000005", "reason": "test"}) + "\n").encode())
    store = SampleStore(path)
    assert store.stats.indexed == 8
    assert _ids(store) == ["w0-00000000", "w0-00000003", "w0-00000004", "w0-00000006", "w0-00000007"]
    assert [r["id"] for r in store.all_records if r["id"] in ("w0-00000001", "w0-00000005")] == ["w0-00000001"]
    assert [r["id"] for r in store.snapshot_records(snap)] == [f"w0-{i:08d}" for i in (0, 1, 2, 3, 4, 6, 7)]
    pool = SyntheticPool(store)
    pool.adopt(store.snapshot())
    assert [r["id"] for r in pool.records] == _ids(store)
    assert store.select(classes=[1, 2, 3]) == [i for i, r in enumerate(store.records) if set(r["classes"]) & {1, 2, 3}]


class _Reads(torch.utils.data.Dataset):
    def __init__(self, store: SampleStore) -> None:
        self.store = store

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int):
        s = self.store.read(i)
        return torch.from_numpy(s.image), torch.from_numpy(s.mask), s.seed, self.store.stats.parsed


def test_forked_dataloader_workers_share_the_index_and_read_correct_samples(tmp_path):
    path = _fill(tmp_path / "s", range(16))
    store = SampleStore(path)
    assert store.stats.indexed == 16 and store.segment_rows("w0").base is not None
    loader = torch.utils.data.DataLoader(
        _Reads(store), batch_size=4, num_workers=2, multiprocessing_context="fork", shuffle=False
    )
    seen = 0
    for images, masks, seeds, parsed in loader:
        for image, mask, seed in zip(images, masks, seeds.tolist()):
            truth = render_seed(seed, 32)
            assert np.array_equal(image.numpy(), truth.image) and np.array_equal(mask.numpy(), truth.semantic)
            seen += 1
        assert parsed.tolist() == [0] * len(parsed)  # the workers parsed no manifest line
    assert seen == 16


def test_a_pickled_reader_maps_the_index_again_or_parses_if_it_changed(tmp_path):
    path = _fill(tmp_path / "s", range(6))
    store = SampleStore(path)
    copy = pickle.loads(pickle.dumps(store))  # as a spawned DataLoader worker gets it
    assert copy.segment_rows("w0").base.path == str(_index(path)) and _ids(copy) == _ids(store)
    assert copy.read(4).seed == 4
    index_segment(path / SEGMENTS / "w0", "w0", ("png", "jpg", "webp"), len(TOY_VOCABULARY), rebuild=True)
    assert pickle.loads(pickle.dumps(store)).read(2).seed == 2  # a rewritten index of the same records
    _index(path).write_bytes(b"garbage")
    copy = pickle.loads(pickle.dumps(store))
    assert _ids(copy) == _ids(store) and copy.read(3).seed == 3


# ---------------------------------------------------------------------------------------- pool equivalence


def _random_line(seg: str, k: int, rng: random.Random, classes: list[int] | None = None, broken: float = 0.05) -> str:
    """Manifest line of record k of `seg` (a broken line with probability `broken`), with random classes (or
    `classes`), quality figures (some missing) and times (many equal)."""
    if rng.random() < broken:
        return "{broken\n"
    sid = f"{seg}-{k:08d}"
    n_classes = len(TOY_VOCABULARY)
    quality = {q: round(rng.random(), 3) for q in ("mean_confidence", "area") if rng.random() < 0.8}
    rec = {
        "id": sid,
        "image": f"{SEGMENTS}/{seg}/samples/{sid}.png",
        "mask": f"{SEGMENTS}/{seg}/samples/{sid}.mask.png",
        "height": 32,
        "width": 32,
        "classes": sorted(rng.sample(range(n_classes), rng.randint(0, n_classes))) if classes is None else classes,
        "quality": quality,
        "created": rng.choice([1000.0, 1000.5, rng.uniform(0, 2000)]),
        "fingerprint": {"model": rng.choice(["a", "b"])},
    }
    return json.dumps(rec) + "\n"


def _random_store(path: Path, rng: random.Random) -> Path:
    """Segments of manifest lines only (no sample files: weights need none), with random classes, quality figures
    (some missing), times, bad lines, retirements and a quarantined record."""
    create_store(path, TOY_VOCABULARY)
    for seg in ("s0", "s1", "s2"):
        (path / SEGMENTS / seg / "samples").mkdir(parents=True)
        lines = [_random_line(seg, k, rng) for k in range(rng.randint(20, 60))]
        (path / SEGMENTS / seg / MANIFEST).write_text("".join(lines))
    retire(path, [f"s1-{k:08d}" for k in range(3)])
    append_log(path, QUARANTINE, b'{"id": "s0-00000004"}\n')
    return path


def _reference_weights(recs: list[dict], params: PoolParams, background: int) -> np.ndarray:
    """The pool's policies as they were written for lists of dicts (before columns)."""
    mq = params.min_quality
    recs = [r for r in recs if all(r.get("quality", {}).get(k, float("-inf")) >= v for k, v in mq.items())]
    n = len(recs)
    if params.policy == "uniform":
        w = np.ones(n)
    elif params.policy == "fresh":
        created = np.array([r.get("created", 0.0) for r in recs])
        age_rank = np.empty(n)
        age_rank[np.argsort(-created, kind="stable")] = np.arange(n)
        w = 0.5 ** (age_rank / (params.fresh_half_life * n))
    elif params.policy == "class_balanced":
        counts: dict[int, int] = {}
        for r in recs:
            for c in r.get("classes", ()):
                counts[c] = counts.get(c, 0) + 1
        w = np.array(
            [max((1.0 / counts[c] for c in r.get("classes", ()) if c != background), default=1.0 / n) for r in recs]
        )
    else:
        w = np.array([max(float(r.get("quality", {}).get(params.quality_key, 0.0)), 1e-6) for r in recs])
    return w / w.sum()


@pytest.mark.parametrize("seed", [0, 1])
def test_pool_policies_weigh_alike_with_and_without_the_index(tmp_path, seed):
    path = _random_store(tmp_path / "s", random.Random(seed))
    assert SampleStore(path).stats.indexed == 0
    assert not index_store(path).failed
    indexed, parsed = SampleStore(path), SampleStore(path, index=False)
    assert indexed.stats.parsed == 0 and indexed.stats.indexed > 0 and parsed.stats.indexed == 0
    assert indexed.stats.bad_lines == parsed.stats.bad_lines > 0
    assert [(p.file, p.line) for p in indexed.stats.problems] == [(p.file, p.line) for p in parsed.stats.problems]
    snap = parsed.snapshot()
    assert indexed.snapshot() == snap
    lines = {}
    for seg in ("s0", "s1", "s2"):
        for raw in (path / SEGMENTS / seg / MANIFEST).read_text().splitlines():
            if raw.startswith('{"'):
                lines[json.loads(raw)["id"]] = json.loads(raw)
    background = TOY_VOCABULARY.names.index(TOY_VOCABULARY.background)
    live = [i for i in lines if i != "s0-00000004" and i not in {f"s1-{k:08d}" for k in range(3)}]
    live.sort(key=lambda i: (i.rsplit("-", 1)[0], int(i.rsplit("-", 1)[1])))  # canonical: segment, position
    for policy in ("uniform", "fresh", "class_balanced", "quality"):
        for mq in ({}, {"mean_confidence": 0.3}):
            params = PoolParams(policy=policy, min_quality=mq)
            pools = [SyntheticPool(s, params) for s in (indexed, parsed)]
            for pool in pools:
                pool.adopt(snap)
            ids = [r["id"] for r in pools[0].records]
            assert ids == [r["id"] for r in pools[1].records]
            assert ids == [i for i in live if all(lines[i]["quality"].get(k, -math.inf) >= v for k, v in mq.items())]
            assert np.array_equal(pools[0]._weights, pools[1]._weights), (policy, mq)
            want = _reference_weights([lines[i] for i in ids], PoolParams(policy=policy), background)
            assert np.array_equal(pools[0]._weights, want), (policy, mq)
    per_class = {name: sum(c in lines[i]["classes"] for i in live) for c, name in enumerate(TOY_VOCABULARY.names)}
    assert stats(path)["per_class"] == per_class and stats(path)["samples"] == len(live)
    assert indexed.select(fingerprint={"model": "a"}) == parsed.select(fingerprint={"model": "a"})
    assert indexed.select(min_quality={"area": 0.5}) == parsed.select(min_quality={"area": 0.5})


def _grow(path: Path, rng: random.Random, step: int, sizes: dict[str, int]) -> None:
    """One round of a live store: records (and a bad line now and then) appended to old and new segments, at the
    end of the canonical order and before old records; records without classes only (the class order by count
    holds); a retirement or a quarantine."""
    for seg in rng.sample(["a0", "s0", "s1", "s1b", "s2", "z9"], rng.randint(1, 3)):
        if seg not in sizes:
            (path / SEGMENTS / seg / "samples").mkdir(parents=True)
            sizes[seg] = 0
        classes = [] if step == 2 else None
        lines = [_random_line(seg, sizes[seg] + k, rng, classes) for k in range(rng.randint(1, 12))]
        sizes[seg] += len(lines)
        with open(path / SEGMENTS / seg / MANIFEST, "a") as f:
            f.write("".join(lines))
    if step == 4:
        retire(path, ["s2-00000007"])
    if step == 5:
        append_log(path, QUARANTINE, b'{"id": "s0-00000009"}\n')


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_pool_that_adopts_grown_snapshots_weighs_exactly_as_a_new_pool(tmp_path, seed, monkeypatch):
    """The incremental weights (new records merged into the kept age order, class counts and rarest classes) are
    bit for bit those of a pool that weighs the same snapshot from scratch, draws included."""
    import synthaug.pool as pool_module

    path = _random_store(tmp_path / "s", random.Random(seed))
    if seed:
        assert not index_store(path).failed  # indexed rows and parsed rows after them
    used: Counter[str] = Counter()

    def spy(owner: object, name: str) -> None:
        real = getattr(owner, name)

        def counted(*args):
            used[name] += 1
            return real(*args)

        monkeypatch.setattr(owner, name, counted)

    spy(pool_module._Gapped, "splice")
    spy(pool_module, "_merge_sorted")
    background = TOY_VOCABULARY.names.index(TOY_VOCABULARY.background)
    for policy in ("uniform", "fresh", "class_balanced", "quality"):
        for mq in ({}, {"mean_confidence": 0.3}):
            case = tmp_path / f"{policy}-{len(mq)}"
            shutil.copytree(path, case)
            rng, sizes = random.Random(seed), {seg: 60 for seg in ("s0", "s1", "s2")}
            params = PoolParams(policy=policy, min_quality=mq)
            grown = SyntheticPool(SampleStore(case), params)
            grown.adopt(grown.current_snapshot())
            snaps = []
            for step in range(8):
                _grow(case, rng, step, sizes)
                snaps.append(grown.current_snapshot())
                snap = snaps[1] if step == 6 else snaps[-1]  # an older snapshot again, then a newer one
                grown.adopt(snap)
                fresh = SyntheticPool(SampleStore(case), params)
                fresh.adopt(snap)
                ids = [r["id"] for r in grown.records]
                assert ids == [r["id"] for r in fresh.records], (policy, mq, step)
                assert np.array_equal(grown._weights, fresh._weights), (policy, mq, step)
                want = _reference_weights([dict(r) for r in grown.records], PoolParams(policy=policy), background)
                assert np.array_equal(grown._weights, want), (policy, mq, step)
                assert np.array_equal(grown.assignment(40, step, seed), fresh.assignment(40, step, seed))
    assert used["splice"] and used["_merge_sorted"]  # the incremental paths ran


def test_a_segment_indexed_while_empty_keeps_its_records_in_order(tmp_path):
    """An empty sealed segment's index says its rows are in order, so the records appended after it are taken as
    one range (not re-sorted at every snapshot)."""
    path = create_store(tmp_path / "s", TOY_VOCABULARY)
    (path / SEGMENTS / "live" / "samples").mkdir(parents=True)
    (path / SEGMENTS / "live" / MANIFEST).write_bytes(b"")
    assert index_store(path).written == ["live"]
    store = SampleStore(path)
    with open(path / SEGMENTS / "live" / MANIFEST, "a") as f:
        f.write("".join(_random_line("live", k, random.Random(k), broken=0) for k in range(5)))
    store.refresh()
    rows = store.segment_rows("live")
    assert rows.base is not None and rows.base.rows == 0 and rows.sorted
    assert all(isinstance(r, slice) for _, r in store.snapshot_records(store.snapshot()).runs)


def test_score_columns_look_up_every_record_as_the_scores_do_by_id(tmp_path):
    """The pool's vectorised lookup of a scores file (loss filter, hardness) finds exactly the records whose id a
    scores line names, and no record for ids of other forms (fewer digits, other segments, non-ASCII digits)."""
    from synthaug.pool import ScoreColumns
    from synthaug.scoring import SampleScore, Scores

    path = _random_store(tmp_path / "s", random.Random(3))
    store = SampleStore(path)
    records = store.snapshot_records(store.snapshot())
    rng = random.Random(0)
    by_id = {r["id"]: SampleScore(None, rng.random(), rng.random() * 3) for r in records if rng.random() < 0.5}
    for odd in ("s0-1", "s0-000000001", "s9-00000001", "s0-０0000001", "s0", "-00000001", "s0-1234567890123"):
        by_id[odd] = SampleScore(None, 0.99, 9.0)
    scores = Scores(Path("00000000000000000001-x.jsonl"), {}, by_id)
    columns = ScoreColumns(scores)
    for figure in ("ignored_share", "hardness"):
        want = [getattr(s, figure) if (s := scores.get(r["id"])) else np.nan for r in records]
        assert np.array_equal(columns.values(records, figure), np.array(want), equal_nan=True)
    assert np.isnan(ScoreColumns(None).values(records, "hardness")).all()


def test_in_place_insertions_give_what_np_insert_gives():
    """The pool's in-place sorted insertions (near the front, the back, the middle, anywhere; past the spare room)
    equal np.insert."""
    from synthaug.pool import _Gapped

    rng = np.random.default_rng(0)
    want = rng.random(50)
    got = _Gapped(want)
    for step in range(300):
        n, k = len(want), int(rng.integers(0, 60))
        lo, hi = [(0, 5), (n - 5, n), (n // 2 - 5, n // 2 + 5), (0, n)][step % 4]
        before = np.sort(rng.integers(max(lo, 0), min(hi, n) + 1, size=k))
        new = rng.random(k)
        want = np.insert(want, before, new)
        got.insert(before, new)
        assert np.array_equal(got.array, want)
    assert len(want) > 2 * 4096  # grown past its spare room

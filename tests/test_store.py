"""The sample store: crash safety, many writers and readers, corrupt files, versions, export and show."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from synthaug.cli import main as cli
from synthaug.store import (
    MANIFEST,
    SEGMENTS,
    SampleStore,
    StoreError,
    StoreVersionError,
    StoreWriter,
    create_store,
    merge_into,
)
from synthaug.store_ops import export, stats, verify
from synthaug.toy.world import TOY_VOCABULARY, render_seed
from synthaug.vocabulary import ClassVocabulary

HERE = Path(__file__).parent


def _fill(path: Path, seeds, segment: str = "w0", fmt: str = "png") -> Path:
    create_store(path, TOY_VOCABULARY, image_format=fmt)
    with StoreWriter(path, segment=segment, fsync=False) as w:
        for s in seeds:
            w.add(render_seed(s, 32).to_sample())
    return path


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_roundtrip_bit_exact_with_instances(tmp_path):
    store = SampleStore(_fill(tmp_path / "s", range(5)))
    assert len(store) == 5
    for i, seed in enumerate(range(5)):
        s, truth = store.read(i), render_seed(seed, 32)
        assert np.array_equal(s.image, truth.image) and np.array_equal(s.mask, truth.semantic)
        assert s.prompt == truth.scene.caption and s.seed == seed
        assert [inst.class_id for inst in s.instances] == truth.instance_classes
        for inst, m in zip(s.instances, truth.instances):
            assert np.array_equal(inst.mask(), m)
        assert store.records[i]["classes"] == sorted(set(np.unique(truth.semantic).tolist()))


@pytest.mark.parametrize("fmt", ["jpg", "webp"])
def test_lossy_formats_keep_masks_exact(tmp_path, fmt):
    store = SampleStore(_fill(tmp_path / "s", range(3), fmt=fmt))
    s = store.read(0)
    assert store.records[0]["image"].endswith(f".{fmt}")
    assert np.array_equal(s.mask, render_seed(0, 32).semantic)
    assert np.abs(s.image.astype(int) - render_seed(0, 32).image).mean() < 8


def test_refresh_reads_only_new_records_and_ignores_torn_tail(tmp_path):
    path = _fill(tmp_path / "s", range(3))
    store = SampleStore(path)
    assert store.refresh() == 0
    with StoreWriter(path, segment="w1", fsync=False) as w:
        w.add(render_seed(10, 32).to_sample())
    manifest = path / SEGMENTS / "w1" / MANIFEST
    with open(manifest, "ab") as f:
        f.write(b'{"id": "w1-00000001", "image": "segm')  # a writer died mid-line
    assert store.refresh() == 1 and len(store) == 4
    # The writer that resumes the segment drops the torn line; the next record is whole.
    with StoreWriter(path, segment="w1", resume=True, fsync=False) as w:
        assert w.count == 1
        w.add(render_seed(11, 32).to_sample())
    assert store.refresh() == 1
    assert [r["seed"] for r in store.records] == [0, 1, 2, 10, 11]
    assert store.stats.bad_lines == 0


def test_one_writer_per_segment(tmp_path):
    path = _fill(tmp_path / "s", range(1), segment="mine")
    with pytest.raises(StoreError, match="each writer needs its own segment"):
        StoreWriter(path, segment="mine")
    with pytest.raises(ValueError, match="letters, digits"):
        StoreWriter(path, segment="a/b")


def test_kill_9_never_leaves_a_visible_partial_sample(tmp_path):
    """Kill writers at random points over many runs: the store always opens, verifies clean, holds only whole samples."""
    path = tmp_path / "s"
    create_store(path, TOY_VOCABULARY)
    rng = random.Random(0)
    next_seed = 0
    for run in range(12):
        proc = _spawn(
            str(HERE / "store_writer_proc.py"), str(path), f"run{run}", str(next_seed), "100000", rng.choice("01")
        )
        # Wait for the first sample, then kill at a random moment while it keeps writing.
        proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        next_seed += 100000
        store = SampleStore(path)
        report = verify(path)
        assert report.clean, report.summary()
        assert report.checked == len(store) > 0
        for i in range(len(store)):
            s = store.read(i)
            assert np.array_equal(s.image, render_seed(s.seed, 32).image)
    # The crash leftovers (files whose record never landed) are invisible, and repair removes them.
    report = verify(path, repair=True)
    assert report.clean and report.repaired
    assert not verify(path).orphans and not verify(path).temp_files


def test_four_writers_two_readers_concurrently(tmp_path):
    path = tmp_path / "s"
    create_store(path, TOY_VOCABULARY)
    per_writer = 25
    readers = [_spawn(str(HERE / "store_reader_proc.py"), str(path), str(4 * per_writer), "120") for _ in range(2)]
    writers = [
        _spawn(str(HERE / "store_writer_proc.py"), str(path), f"w{k}", str(k * 1000), str(per_writer), "1")
        for k in range(4)
    ]
    for w in writers:
        _, err = w.communicate(timeout=180)
        assert w.returncode == 0, err
    for r in readers:
        out, err = r.communicate(timeout=180)
        assert r.returncode == 0, err
        assert int(out.strip()) == 4 * per_writer  # each reader saw every sample, bit-exact, none failed to read
    store = SampleStore(path)
    assert sorted(r["seed"] for r in store.records) == sorted(k * 1000 + i for k in range(4) for i in range(per_writer))
    assert len({r["id"] for r in store.records}) == 4 * per_writer


def test_corrupt_files_are_skipped_counted_reported_and_quarantined(tmp_path, capsys):
    path = _fill(tmp_path / "s", range(6))
    store = SampleStore(path)
    image = path / store.records[1]["image"]
    image.write_bytes(image.read_bytes()[: len(image.read_bytes()) // 2])  # truncated image
    mask = path / store.records[3]["mask"]
    mask.write_bytes(b"not a png at all")  # garbled mask
    (path / store.records[4]["image"]).unlink()  # missing file
    got = [store.try_read(i) for i in range(len(store))]
    assert [g is None for g in got] == [False, True, False, True, True, False]
    assert set(store.stats.corrupt) == {store.records[i]["id"] for i in (1, 3, 4)}
    report = verify(path)
    assert not report.clean and len(report.corrupt) == 3
    assert cli(["verify", str(path)]) == 1
    assert "corrupt" in capsys.readouterr().out
    assert cli(["verify", str(path), "--repair"]) == 0
    assert len(SampleStore(path)) == 3 and verify(path).clean
    moved = [f for f in (path / "quarantine").iterdir() if f.suffix != ".jsonl"]
    assert len(moved) == 5  # 2 files each for 1 and 3, 1 left for 4; moved.jsonl lists them


def test_newer_format_version_is_refused_clearly(tmp_path):
    path = _fill(tmp_path / "s", range(1))
    meta = json.loads((path / "store.json").read_text())
    meta["format_version"] = 99
    (path / "store.json").write_text(json.dumps(meta))
    with pytest.raises(StoreVersionError, match=r"format version 99.*upgrade synthaug"):
        SampleStore(path)


def test_not_a_store(tmp_path):
    with pytest.raises(StoreError, match="not a synthaug store"):
        SampleStore(tmp_path)


def test_different_vocabularies_refuse_to_merge(tmp_path):
    a = _fill(tmp_path / "a", range(2))
    other = ClassVocabulary(names=("background", "cat"), palette=((0, 0, 0), (1, 1, 1)))
    b = tmp_path / "b"
    create_store(b, other)
    with pytest.raises(ValueError, match=r"\['background', 'circle', 'square', 'triangle'\]"):
        merge_into(a, b)
    with pytest.raises(ValueError, match="class vocabularies differ"):
        create_store(a, other)
    c = _fill(tmp_path / "c", range(5, 8), segment="w1")
    assert merge_into(a, c) == 1 and len(SampleStore(a)) == 5


def test_select_filters(tmp_path):
    path = _fill(tmp_path / "s", range(20))
    store = SampleStore(path)
    circles = store.select(classes=["circle"])
    assert circles and all(1 in store.records[i]["classes"] for i in circles)
    assert store.select(fingerprint={"model": "toy-renderer"}) == list(range(20))
    assert store.select(fingerprint={"model": "other"}) == []
    assert store.select(min_quality={"confidence": 0.5}) == []  # no sample has that figure


def test_export_mmseg_and_coco(tmp_path):
    path = _fill(tmp_path / "s", range(4))
    assert export(path, tmp_path / "mm", "mmseg") == 4
    store = SampleStore(path)
    from synthaug.imageio import read_image, read_mask

    for i in range(4):
        sid = store.records[i]["id"]
        assert np.array_equal(read_mask(tmp_path / "mm" / "ann_dir" / "train" / f"{sid}.png"), store.read(i).mask)
        assert np.array_equal(read_image(tmp_path / "mm" / "img_dir" / "train" / f"{sid}.png"), store.read(i).image)
    assert export(path, tmp_path / "co", "coco") == 4
    coco = json.loads((tmp_path / "co" / "annotations" / "instances_train.json").read_text())
    from synthaug import rle

    assert len(coco["images"]) == 4
    assert len(coco["annotations"]) == sum(len(store.read(i).instances) for i in range(4))
    first = [a for a in coco["annotations"] if a["image_id"] == 1]
    assert np.array_equal(rle.decode(first[0]["segmentation"]), render_seed(0, 32).instances[0])


def test_stats_and_show(tmp_path, capsys):
    path = _fill(tmp_path / "s", range(12))
    s = stats(path)
    assert s["samples"] == 12 and s["per_segment"] == {"w0": 12}
    assert s["per_class"]["circle"] == sum(1 in SampleStore(path).records[i]["classes"] for i in range(12))
    assert cli(["stats", str(path)]) == 0
    assert "per class" in capsys.readouterr().out
    assert cli(["show", str(path), "--out", str(tmp_path / "g")]) == 0
    page = (tmp_path / "g" / "index.html").read_text()
    assert page.count('class="card"') == 12 and "sort by" in page
    assert (tmp_path / "g" / "contact_sheet.png").stat().st_size > 0

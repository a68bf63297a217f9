"""Exports for clusters (WebDataset tar shards, round trip), exports that copy by default, and verify at scale
(a random sample of the store, several processes)."""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict

import numpy as np
from PIL import Image
from test_store import _fill

from synthaug import rle
from synthaug.cli import main as cli
from synthaug.store import SEGMENTS, SampleStore, StoreWriter
from synthaug.store_ops import export, verify
from synthaug.toy.world import render_seed


def _read_shards(folder, split="train") -> dict[str, dict[str, bytes]]:
    """{key: {extension: bytes}} of every shard, grouped as WebDataset groups them (name up to the first dot)."""
    groups: dict[str, dict[str, bytes]] = defaultdict(dict)
    for shard in sorted(folder.glob(f"{split}-*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.split(".", 1)
                groups[key][ext] = tar.extractfile(member).read()
    return dict(groups)


def test_webdataset_shards_round_trip_every_sample(tmp_path):
    path = _fill(tmp_path / "s", range(5))
    with StoreWriter(path, segment="node1.cluster", fsync=False) as w:  # a dotted segment name
        for seed in (20, 21):
            w.add(render_seed(seed, 32).to_sample())
    (path / SampleStore(path).records[2]["image"]).write_bytes(b"garbled")  # skipped, never exported
    assert cli(["export", str(path), str(tmp_path / "wds"), "--format", "webdataset", "--shard-size", "4"]) == 0
    assert sorted(p.name for p in (tmp_path / "wds").glob("*.tar")) == ["train-000000.tar", "train-000001.tar"]
    groups = _read_shards(tmp_path / "wds")
    store = SampleStore(path)
    readable = [r for r in store.records if store.try_read_record(r) is not None]
    assert len(groups) == len(readable) == 6
    for key, rec in zip(sorted(groups), readable):
        files = groups[key]
        assert set(files) == {"png", "mask.png", "json"}
        meta = json.loads(files["json"])
        assert meta["id"] == rec["id"] and "image" not in meta
        sample = store.read_record(rec)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(files["png"])).convert("RGB")), sample.image)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(files["mask.png"]))), sample.mask)
        assert [rle.decode(i["rle"]).sum() for i in meta["instances"]] == [i.area for i in sample.instances]
        assert meta["seed"] == sample.seed and meta["classes"] == rec["classes"]
    assert json.loads((tmp_path / "wds" / "classes.json").read_text())["names"][0] == "background"


def test_exports_copy_by_default_so_editing_one_never_changes_the_store(tmp_path):
    path = _fill(tmp_path / "s", range(2))
    rec = SampleStore(path).records[0]
    before = (path / rec["image"]).read_bytes()
    export(path, tmp_path / "mm", "mmseg")
    exported = tmp_path / "mm" / "img_dir" / "train" / f"{rec['id']}.png"
    assert exported.stat().st_ino != (path / rec["image"]).stat().st_ino
    exported.write_bytes(b"edited")
    assert (path / rec["image"]).read_bytes() == before and verify(path).clean
    export(path, tmp_path / "linked", "coco", link=True)
    assert (tmp_path / "linked" / "images" / "train" / f"{rec['id']}.png").stat().st_ino == (
        path / rec["image"]
    ).stat().st_ino


def test_verify_a_random_sample_and_in_several_processes_finds_the_same(tmp_path):
    path = _fill(tmp_path / "s", range(300))
    store = SampleStore(path)
    bad = store.records[257]
    (path / bad["mask"]).write_bytes(b"not a png")
    full = verify(path, jobs=2)
    assert full.checked == 300 and list(full.corrupt) == [bad["id"]]
    assert f"{SEGMENTS}/w0/manifest.jsonl:258: corrupt: sample {bad['id']}" in full.summary()
    assert verify(path).summary() == full.summary()
    part = verify(path, sample=20)
    assert part.checked == 20 and "checked 20 of 300 (a random sample) samples" in part.summary()
    assert cli(["verify", str(path), "--sample", "20", "--jobs", "2"]) in (0, 1)

"""Exports for clusters (WebDataset tar shards, round trip), exports that copy by default, verify at scale
(a random sample of the store, several processes), the gallery's class filter, and output folders in the store."""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image
from test_store import _fill
from test_store_adversarial import _tree

from synthaug import rle
from synthaug.cli import main as cli
from synthaug.store import SEGMENTS, SampleStore, StoreWriter, create_store
from synthaug.store_ops import export, verify
from synthaug.toy.world import TOY_VOCABULARY, render_seed
from synthaug.vocabulary import ClassVocabulary


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


class _Page(HTMLParser):
    """The class checkboxes of a gallery page and each card's data-classes, as the browser hands them to its script."""

    def __init__(self) -> None:
        super().__init__()
        self.boxes: list[str] = []
        self.cards: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("class") == "cls":
            self.boxes.append(a["value"] or "")
        elif tag == "div" and a.get("class") == "card":
            self.cards.append(a["data-classes"] or "")


def test_show_filters_by_class_names_with_spaces(tmp_path):
    """A class named 'potted plant' is one checkbox and selects exactly the cards of samples holding it: the page
    keeps each card's class names as a JSON list, never a space-joined string its script would split."""
    vocab = ClassVocabulary(
        names=("background", "potted plant", "square", "dining table"), palette=TOY_VOCABULARY.palette
    )
    path = create_store(tmp_path / "s", vocab)
    with StoreWriter(path, segment="w0", fsync=False) as w:
        for seed in range(8):
            w.add(render_seed(seed, 32).to_sample())
    assert cli(["show", str(path), "--out", str(tmp_path / "g")]) == 0
    page = (tmp_path / "g" / "index.html").read_text()
    parsed = _Page()
    parsed.feed(page)
    assert parsed.boxes == list(vocab.names)
    assert "JSON.parse(c.dataset.classes)" in page and ".split(" not in page
    shown = [json.loads(c) for c in parsed.cards]  # what the page's filter reads from each card
    store = SampleStore(path)
    for cid, name in enumerate(vocab.names):
        expected = [cid in store.read(i).classes_present for i in range(len(store))]
        assert [name in classes for classes in shown] == expected, name
    assert any("potted plant" in classes for classes in shown)


@pytest.mark.parametrize(
    "case", ["the store itself", "a folder in the store", "a link to the store", "a new folder under a link into it"]
)
def test_export_and_show_refuse_an_output_folder_in_the_store(tmp_path, capsys, case):
    """Neither tool ever writes into the store it reads: an output folder that is the store or lies inside it,
    symbolic links resolved, is refused (exit 2, one line naming both) before anything is written."""
    path = _fill(tmp_path / "s", range(2))
    (tmp_path / "link").symlink_to(path if case == "a link to the store" else path / SEGMENTS)
    out = {
        "the store itself": path,
        "a folder in the store": path / "gallery",
        "a link to the store": tmp_path / "link",
        "a new folder under a link into it": tmp_path / "link" / "new",
    }[case]
    before = _tree(path)
    for argv in (["export", str(path), str(out), "--format", "coco"], ["show", str(path), "--out", str(out)]):
        assert cli(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"the output folder {out}" in err and f"into the store {path}" in err, err
        assert _tree(path) == before, argv[0]
    store = SampleStore(path)
    assert len(store) == 2 and all(store.try_read_record(r) is not None for r in store.records) and verify(path).clean


def test_export_and_show_refuse_a_store_inside_a_folder_they_write(tmp_path, capsys):
    """Output folder OUT is outside the store, but the store is OUT/img_dir (or OUT/thumbs): the subfolder the
    tool would write into is the store, so it is refused too."""
    for tool, sub, argv in (
        ("export", "img_dir", ["--format", "mmseg"]),
        ("show", "thumbs", []),
    ):
        out = tmp_path / tool
        path = _fill(out / sub, range(2))
        before = _tree(path)
        args = [tool, str(path), str(out), *argv] if tool == "export" else [tool, str(path), "--out", str(out), *argv]
        assert cli(args) == 2
        err = capsys.readouterr().err
        assert f"the output folder {out}" in err and f"into the store {path}" in err, err
        assert _tree(path) == before and verify(path).clean

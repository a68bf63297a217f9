"""The store under attack and accident: paths out of it, bad lines, broken samples, short writes, a deleted store.

Every case ends the same way: the store opens, `verify` reports the problem by file and line, nothing
outside the store changed (a folder beside it is hashed before and after), and every committed sample
that was not deliberately broken reads back.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_store import HERE, _fill

from synthaug.cli import main as cli
from synthaug.pool import SyntheticPool
from synthaug.store import (
    MANIFEST,
    QUARANTINE,
    RETIRED,
    SEGMENTS,
    SampleStore,
    StoreError,
    StoreGoneError,
    StoreWriter,
    retire,
)
from synthaug.store_ops import export, verify
from synthaug.toy.world import render_seed


def _tree(folder: Path) -> dict[str, str]:
    """Every entry under `folder` (links not followed) with its content hash and mode: what 'unchanged' means."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(folder).as_posix()
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() + oct(p.stat().st_mode)
            else:
                out[rel] = "dir"
    return out


@pytest.fixture
def world(tmp_path):
    """A store of 4 samples and, beside it, a folder whose files would decode as a valid sample if leaked."""
    store = _fill(tmp_path / "store", range(4))
    outside = tmp_path / "outside"
    outside.mkdir()
    rec = SampleStore(store).records[0]
    shutil.copyfile(store / rec["image"], outside / "secret.png")
    shutil.copyfile(store / rec["mask"], outside / "secret.mask.png")
    (outside / "victim.txt").write_text("must survive")
    return store, outside, _tree(outside)


def _append_line(store: Path, line: bytes | dict | list, segment: str = "w0", name: str = "") -> int:
    """Append one line to a log file (the segment's manifest by default); returns its line number."""
    path = store / (name or f"{SEGMENTS}/{segment}/{MANIFEST}")
    data = line if isinstance(line, bytes) else json.dumps(line).encode()
    before = path.read_bytes().count(b"\n") if path.exists() else 0
    with open(path, "ab") as f:
        f.write(data + b"\n")
    return before + 1


def _record(store: Path, k: int = 0, **changes) -> dict:
    """A copy of record k with `changes` applied."""
    return {**SampleStore(store).records[k], **changes}


def _ends_well(store: Path, outside: Path, before: dict, *expected: str, broken: tuple[str, ...] = ()) -> str:
    """Assert the four endings: opens, verify names the problem(s), outside unchanged, the rest readable."""
    s = SampleStore(store)
    text = verify(store).summary()
    for e in expected:
        assert e in text, text
    assert _tree(outside) == before
    unreadable = [r["id"] for r in s.records if s.try_read_record(r) is None]
    assert sorted(unreadable) == sorted(broken), s.stats.corrupt
    return text


# ------------------------------------------------------------------------------------------ containment


@pytest.mark.parametrize(
    "case, image",
    [
        ("absolute image path", "ABS"),
        ("dotdot image path", "segments/w0/samples/../../../../outside/secret.png"),
        ("another segment's folder", "segments/w1/samples/w0-00000009.png"),
    ],
)
def test_record_path_outside_its_segment_is_never_read_moved_or_deleted(world, case, image):
    store, outside, before = world
    image = str(outside / "secret.png") if image == "ABS" else image
    line = _append_line(store, _record(store, id="w0-00000009", image=image, mask=str(outside / "secret.mask.png")))
    s = SampleStore(store)
    assert len(s) == 4 and "w0-00000009" not in {r["id"] for r in s.all_records}
    report = verify(store, repair=True)
    assert f"segments/w0/manifest.jsonl:{line}: unsafe record" in report.summary()
    assert export(store, store.parent / "exp", "mmseg", link=True) == 4
    assert not (store.parent / "exp" / "img_dir" / "train" / "secret.png").exists()
    # Repair blanked the line (its text kept in quarantine/lines.jsonl); the store is clean again.
    saved = [json.loads(x) for x in (store / "quarantine" / "lines.jsonl").read_text().splitlines()]
    assert saved[0]["line"] == line and "secret" in saved[0]["text"]
    assert verify(store).clean
    _ends_well(store, outside, before)


def test_symlinked_segment_folder_is_never_read_or_touched(world):
    store, outside, before = world
    evil = outside / "evil"
    shutil.copytree(store / SEGMENTS / "w0", evil)  # a whole valid segment, out of the store
    (store / SEGMENTS / "evil").symlink_to(evil)
    (evil / "samples" / "orphan.png").write_bytes(b"x")  # would be an 'orphan' to a repair that followed the link
    before = _tree(outside)
    assert len(SampleStore(store)) == 4
    report = verify(store, repair=True)
    assert "segments/evil: unsafe folder" in report.summary() and report.remaining
    assert cli(["verify", str(store), "--repair"]) == 1  # a person must remove the link: it stays a problem
    _ends_well(store, outside, before, "segments/evil: unsafe folder")


def test_sample_file_symlinked_out_of_the_store_is_unsafe_not_read(world):
    store, outside, before = world
    rec = SampleStore(store).records[2]
    (store / rec["image"]).unlink()
    (store / rec["image"]).symlink_to(outside / "secret.png")  # decodes fine: only containment can stop it
    s = SampleStore(store)
    assert s.try_read_record(s.records[2]) is None and "is a symbolic link" in s.stats.corrupt[rec["id"]]
    report = verify(store, repair=True)
    assert f"segments/w0/manifest.jsonl:3: unsafe sample: sample {rec['id']}" in report.summary()
    assert (store / rec["image"]).is_symlink()  # quarantined by id only: neither the link nor its target moved
    assert rec["id"] not in {r["id"] for r in SampleStore(store).records}
    # The link itself stays a problem for a person to remove; repair keeps saying so.
    assert cli(["verify", str(store), "--repair"]) == 1
    _ends_well(store, outside, before, f"{rec['image']}: unsafe file")


def test_symlink_among_sample_files_is_reported_never_moved(world):
    store, outside, before = world
    link = store / SEGMENTS / "w0" / "samples" / "w0-00000077.png"
    link.symlink_to(outside / "victim.txt")
    report = verify(store, repair=True)
    assert "segments/w0/samples/w0-00000077.png: unsafe file" in report.summary()
    assert link.is_symlink() and (outside / "victim.txt").read_text() == "must survive"
    _ends_well(store, outside, before, "segments/w0/samples/w0-00000077.png: unsafe file")


def test_id_with_path_traversal_and_html_in_fields_stay_harmless_in_show_and_export(world, tmp_path):
    store, outside, before = world
    bad_id = _append_line(store, _record(store, id="../../outside/x"))
    int_id = _append_line(store, _record(store, id=7))
    html_prompt = '<img src=x onerror="alert(1)">'
    with StoreWriter(store, segment="w0", resume=True, fsync=False) as w:
        sample = render_seed(50, 32).to_sample()
        sample.prompt, sample.quality = html_prompt, {'"><script>alert(2)</script>': 0.5}
        w.add(sample)
    gallery = tmp_path / "gallery"
    assert cli(["show", str(store), "--out", str(gallery)]) == 0
    page = (gallery / "index.html").read_text()
    assert page.count('class="card"') == 5
    assert "<img src=x" not in page and "<script>alert" not in page and "&lt;img src=x" in page
    assert all(p.parent == gallery / "thumbs" or p.parent == gallery for p in gallery.rglob("*") if p.is_file())
    assert export(store, tmp_path / "coco", "coco") == 5
    _ends_well(store, outside, before, f"manifest.jsonl:{bad_id}: bad record", f"manifest.jsonl:{int_id}: bad record")


def test_show_and_export_refuse_a_link_planted_in_their_output_folder(world, tmp_path):
    store, outside, before = world
    out = tmp_path / "out"
    out.mkdir()
    (out / "thumbs").symlink_to(outside)
    with pytest.raises(StoreError, match="symbolic link or not a folder"):
        from synthaug.gallery import write_gallery

        write_gallery(store, out)
    (out / "img_dir").symlink_to(outside)
    assert cli(["export", str(store), str(out), "--format", "mmseg"]) == 2
    _ends_well(store, outside, before, "clean")


def test_producer_purge_never_reaches_outside_the_store(world):
    from synthaug.config import GenerationConfig
    from synthaug.producer import Producer

    store, outside, before = world
    _append_line(store, _record(store, id="w0-00000009", image=str(outside / "secret.png")))
    retire(store, ["w0-00000009", "w0-00000000"])
    producer = Producer(GenerationConfig(), store, segment="w0", retire_grace_s=0)
    producer._purge(SampleStore(store))
    assert not (store / SampleStore(store).all_records[0]["image"]).exists()  # a real retired sample is purged
    _ends_well(store, outside, before, "unsafe record")


def test_merge_leaves_out_links(world, tmp_path):
    store, outside, before = world
    src = _fill(tmp_path / "src", range(2), segment="m0")
    (src / SEGMENTS / "m0" / "samples" / "leak.png").symlink_to(outside / "secret.png")
    (src / SEGMENTS / "evil").symlink_to(outside)
    from synthaug.store import merge_into

    assert merge_into(store, src) == 1
    assert not os.path.lexists(store / SEGMENTS / "m0" / "samples" / "leak.png")
    _ends_well(store, outside, before, "clean")


# ------------------------------------------------------------------------------------------ bad lines


def test_bad_lines_in_every_log_are_skipped_counted_reported_and_repairable(world, tmp_path, capsys):
    store, outside, before = world
    q = _append_line(store, b"not json at all", name=QUARANTINE)
    r = _append_line(store, {"id": "w0-00000001"}, name=RETIRED)  # no time
    m = {
        "no image": _append_line(store, {k: v for k, v in _record(store).items() if k != "image"}),
        "no height": _append_line(store, {k: v for k, v in _record(store).items() if k != "height"}),
        "id without dash": _append_line(store, _record(store, id="w000000007")),
        "integer id": _append_line(store, _record(store, id=12)),
        "array": _append_line(store, [1, 2]),
        "binary": _append_line(store, b"\xff\xfe{"),
        "quality not a number": _append_line(store, _record(store, id="w0-00000005", quality={"q": "high"})),
        "class out of range": _append_line(store, _record(store, id="w0-00000006", classes=[9])),
    }
    s = SampleStore(store)
    assert len(s) == 4 and s.stats.bad_lines == 2 + len(m)
    expected = [f"quarantine.jsonl:{q}: bad line", f"retired.jsonl:{r}: bad line"]
    expected += [f"segments/w0/manifest.jsonl:{n}: " for n in m.values()]
    assert cli(["stats", str(store)]) == 0 and "bad log lines skipped: 10" in capsys.readouterr().out
    assert cli(["show", str(store), "--out", str(tmp_path / "g")]) == 0
    pool = SyntheticPool(store)
    assert pool.adopt(pool.current_snapshot()) == 4
    assert cli(["verify", str(store)]) == 1
    _ends_well(store, outside, before, *expected)
    assert cli(["verify", str(store), "--repair"]) == 0
    assert verify(store).clean and len(SampleStore(store)) == 4
    assert len((store / "quarantine" / "lines.jsonl").read_text().splitlines()) == 10
    _ends_well(store, outside, before, "clean")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _bomb_png() -> bytes:
    """A tiny PNG whose header claims 100000 x 100000 pixels: a decompression bomb for any decoder that trusts it."""
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


def _save(arr_or_img, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_broken_samples_are_reported_by_line_and_skipped_at_read_time(world):
    store, outside, before = world
    recs = SampleStore(store).records
    truth = render_seed(1, 32).semantic
    (store / recs[0]["mask"]).write_bytes(_save(Image.fromarray(truth.astype(np.uint16) * 300)))  # 16-bit mask
    (store / recs[1]["image"]).write_bytes(_bomb_png())
    (store / recs[2]["mask"]).write_bytes(_save(Image.fromarray(truth * 60).convert("RGB"), "JPEG"))  # JPEG in .png
    nine = render_seed(3, 32).semantic.copy()
    nine[0, 0] = 9  # a class the 4-class store does not have
    (store / recs[3]["mask"]).write_bytes(_save(Image.fromarray(nine, mode="L")))
    with StoreWriter(store, segment="w1", fsync=False) as w:
        for seed in (10, 11, 12):
            w.add(render_seed(seed, 32).to_sample())
    lines = (store / SEGMENTS / "w1" / MANIFEST).read_text().splitlines()
    garbled, wrong_classes = json.loads(lines[0]), json.loads(lines[1])
    garbled["instances"][0]["rle"]["counts"] = "zz"
    wrong_classes["classes"] = [0]
    (store / SEGMENTS / "w1" / MANIFEST).write_text("\n".join(json.dumps(x) for x in (garbled, wrong_classes)) + "\n")
    with open(store / SEGMENTS / "w1" / MANIFEST, "a") as f:
        f.write(lines[2] + "\n")
    text = _ends_well(
        store,
        outside,
        before,
        "w0/manifest.jsonl:1: corrupt: sample w0-00000000: w0-00000000.mask.png: ValueError: is mode 'I;16'",
        "w0/manifest.jsonl:2: corrupt: sample w0-00000001: w0-00000001.png: DecompressionBombError",
        "w0/manifest.jsonl:3: corrupt: sample w0-00000002: w0-00000002.mask.png: ValueError: holds JPEG data",
        "w0/manifest.jsonl:4: corrupt: sample w0-00000003: mask pixel (0, 0) has class 9",
        "w1/manifest.jsonl:1: corrupt: sample w1-00000000: instances: RLE",
        "w1/manifest.jsonl:2: corrupt: sample w1-00000001: the record's classes [0] are not the mask's",
        broken=("w0-00000000", "w0-00000001", "w0-00000002", "w0-00000003", "w1-00000000"),
    )
    assert "w1-00000002" not in text
    assert cli(["verify", str(store), "--repair"]) == 0
    assert verify(store).clean and [r["id"] for r in SampleStore(store).records] == ["w1-00000002"]
    _ends_well(store, outside, before, "clean")


def test_short_write_stops_the_segment_and_never_glues_lines(world):
    store, outside, before = world
    proc = subprocess.run(
        [sys.executable, str(HERE / "store_shortwrite_proc.py"), str(store), "sw", "6"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = proc.stdout.splitlines()
    assert out[:6] == [f"ok {i}" for i in range(6)], proc.stderr
    assert out[6].startswith("error short write to") and "stopped appending to segment 'sw'" in out[6]
    assert "first 6 records are safe" in out[6] and out[7] == out[6]  # the second add does not write at all
    data = (store / SEGMENTS / "sw" / MANIFEST).read_bytes()
    assert data.count(b"\n") == 6 and not data.endswith(b"\n")  # one torn tail, nothing glued to it
    _ends_well(store, outside, before, "1 manifest(s) end in a torn line")
    with StoreWriter(store, segment="sw", resume=True, fsync=False) as w:  # space freed: the segment goes on
        w.add(render_seed(99, 32).to_sample())
    assert [r["seed"] for r in SampleStore(store).records if r["id"].startswith("sw-")] == [0, 1, 2, 3, 4, 5, 99]
    _ends_well(store, outside, before, "clean")


def test_store_deleted_under_a_reader_says_it_disappeared(world):
    store, _, _ = world
    s = SampleStore(store)
    assert s.try_read(0) is not None  # the reader holds its segment's folder open from here on
    shutil.rmtree(store)
    for i in (0, 1):  # a sample read before and one never read
        with pytest.raises(StoreGoneError, match="disappeared"):
            s.try_read(i)
    with pytest.raises(StoreGoneError, match="disappeared"):
        s.refresh()
    assert s.stats.corrupt == {}


def test_garbled_store_json_and_side_files_are_named(world):
    store, outside, before = world
    (store / "producers").mkdir()
    (store / "producers" / "w0.json").write_text("{oops")
    (store / "readers").mkdir()
    (store / "readers" / "r.json").write_text('{"retired_offset": "x", "time": 1}')
    from synthaug.store import reader_floor

    assert reader_floor(store) is None
    _ends_well(store, outside, before, "producers/w0.json:1: bad status file", "readers/r.json:1: bad status file")
    (store / "store.json").write_text("{")
    with pytest.raises(StoreError, match=r"store.json is not a valid store description"):
        SampleStore(store)


@pytest.mark.parametrize("ahead", [30 * 86400.0, float("inf")])
def test_reader_lease_dated_in_the_future_is_stale_and_reported_not_honoured_forever(world, ahead):
    """A lease whose time is further ahead than clock skew explains (a wrong clock, an edited file) would hold
    the producer's retirement floor until that time came: it is ignored and `verify` names it. A lease a few
    seconds ahead (skew between hosts) is still honoured."""
    from synthaug.config import GenerationConfig
    from synthaug.producer import Producer
    from synthaug.store import reader_floor

    store, outside, before = world
    retire(store, ["w0-00000000"])
    retired_image = store / SampleStore(store).all_records[0]["image"]
    (store / "readers").mkdir()
    skewed = store / "readers" / "host-1.json"
    skewed.write_text(json.dumps({"retired_offset": 0, "time": time.time() + 30, "pid": 1}))
    assert reader_floor(store) == 0  # 30 s ahead: within the tolerated skew, honoured
    producer = Producer(GenerationConfig(), store, segment="w0", retire_grace_s=0)
    producer._purge(SampleStore(store))
    assert retired_image.exists()  # the honoured lease predates the retirement: its files stay
    skewed.unlink()
    (store / "readers" / "host-2.json").write_text(json.dumps({"retired_offset": 0, "time": time.time() + ahead}))
    assert reader_floor(store) is None
    producer._purge(SampleStore(store))
    assert not retired_image.exists()  # the retirement goes ahead: the future lease holds nothing back
    why = "in the future" if ahead < float("inf") else "not a finite number"
    _ends_well(store, outside, before, "readers/host-2.json:1: bad status file", why)


def test_symlinked_log_and_lease_folders_are_never_read_or_written_through(world, caplog):
    store, outside, before = world
    (outside / "retired.jsonl").write_text('{"id": "w0-00000000", "time": 1}\n')
    (store / RETIRED).symlink_to(outside / "retired.jsonl")
    (store / "readers").symlink_to(outside)
    before = _tree(outside)
    s = SampleStore(store)
    assert len(s) == 4 and not s.retired  # the linked retired.jsonl is not read
    with pytest.raises(StoreError, match="symbolic link"):
        retire(store, ["w0-00000001"])
    pool = SyntheticPool(store, lease=True)
    assert pool.adopt(pool.current_snapshot()) == 4 and "no reader lease" in caplog.text
    _ends_well(store, outside, before, "retired.jsonl: unsafe file", "readers: unsafe folder")


def test_a_record_readers_would_reject_is_never_committed(tmp_path):
    """NaN or infinite quality figures and a non-text prompt: refused before any file is written, so that
    no later repair can move a committed sample's files for it."""
    import math

    from synthaug.store import SampleStore, StoreWriter, create_store
    from synthaug.toy.world import TOY_VOCABULARY, render_seed

    path = create_store(tmp_path / "s", TOY_VOCABULARY)
    with StoreWriter(path, "seg0", fsync=False) as w:
        w.add(render_seed(0, 16).to_sample())
        for field, value in (("quality", {"clip": math.nan}), ("quality", {"clip": math.inf}), ("prompt", None)):
            s = render_seed(1, 16).to_sample()
            setattr(s, field, value)
            with pytest.raises(ValueError, match="sample not written"):
                w.add(s)
        w.add(render_seed(2, 16).to_sample())
    store = SampleStore(path)
    assert [r["id"] for r in store.records] == ["seg0-00000000", "seg0-00000001"]
    assert len(list((path / "segments" / "seg0" / "samples").iterdir())) == 4  # nothing but their files


def test_a_record_naming_another_samples_files_never_moves_them(tmp_path):
    """A record with another sample's image and mask (and wrong classes) is unsafe: repair and purge keep the files."""
    import json

    from synthaug.cli import main as cli
    from synthaug.store import SampleStore, StoreWriter, create_store
    from synthaug.toy.world import TOY_VOCABULARY, render_seed

    path = create_store(tmp_path / "s", TOY_VOCABULARY)
    with StoreWriter(path, "seg0", fsync=False) as w:
        for i in range(3):
            w.add(render_seed(i, 16).to_sample())
    manifest = path / "segments" / "seg0" / "manifest.jsonl"
    rec = json.loads(manifest.read_text().splitlines()[1])
    rec.update(id="seg0-00000099", classes=[3])
    with manifest.open("a") as f:
        f.write(json.dumps(rec) + "\n")
    assert cli(["verify", str(path)]) == 1
    cli(["verify", str(path), "--repair"])
    assert cli(["verify", str(path), "--purge-quarantine"]) == 0
    store = SampleStore(path)
    assert [r["id"] for r in store.records] == ["seg0-00000000", "seg0-00000001", "seg0-00000002"]
    assert all(store.try_read(i) is not None for i in range(3))


def test_a_deeply_nested_line_is_skipped_not_fatal(tmp_path):
    from synthaug.cli import main as cli
    from synthaug.store import SampleStore, StoreWriter, create_store
    from synthaug.toy.world import TOY_VOCABULARY, render_seed

    path = create_store(tmp_path / "s", TOY_VOCABULARY)
    with StoreWriter(path, "seg0", fsync=False) as w:
        w.add(render_seed(0, 16).to_sample())
    with (path / "segments" / "seg0" / "manifest.jsonl").open("a") as f:
        f.write("[" * 3000 + "\n")  # json.loads recurses past Python's limit
    assert len(SampleStore(path)) == 1
    assert cli(["stats", str(path)]) == 0 and cli(["verify", str(path)]) == 1


@pytest.mark.parametrize(
    "line",
    [
        b'{"a":1}\n',
        b' {"a":1}\n',
        b'{"a":1} \t\r\n',
        b'{"a":1}\r',
        b'{"a":1}\x0b\n',
        b'{"a":1}\xc2\xa0\n',
        b'{"a":1}{"b":2}\n',
        b"1, 2\n",
        b'\xef\xbb\xbf{"a":1}\n',
        b'\xef\xbb\xbf\xef\xbb\xbf{"a":1}\n',
        b'{"a":"\xff"}\n',
        '{"a":1}\n'.encode("utf-16"),
        b"NaN\n",
        b'{"a":\n',
        b'{"a":1,"a":2}\n',
        b"[" * 3000 + b"\n",
    ],
)
def test_a_manifest_line_parses_exactly_as_json_loads_parses_it(line):
    """The reader's direct scan of the usual line gives what store_check.parse_line (json.loads) gives, value or
    error, for every unusual line too (spaces around, BOMs, other encodings, extra data, NaN, deep nesting)."""
    from synthaug.store_check import parse_line
    from synthaug.store_rows import _parse

    try:
        want = parse_line(line.decode("utf-8-sig"))
    except UnicodeDecodeError:
        want = parse_line(line)
    got = _parse(line)
    assert type(got) is type(want)
    if isinstance(want, Exception):
        assert str(got) == str(want)
    else:
        assert json.dumps(got) == json.dumps(want)


@pytest.mark.parametrize(
    "classes", [[], [0, 3], [3, 0, 3], [0, 4], [-1], [True], [0, 1.0], [0, "1"], "01", None, (0, 1), [2**70]]
)
def test_class_ids_are_checked_alike_on_the_fast_path(classes):
    from synthaug.store_check import _class_ids, _is_int

    want = isinstance(classes, list) and all(_is_int(c) and 0 <= c < 4 for c in classes)
    assert _class_ids(classes, 4) == want

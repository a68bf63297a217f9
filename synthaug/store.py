"""The on-disk sample store: many lock-free writers, crash-safe records, incremental readers.

    STORE/
      store.json                        format version, class vocabulary, ignore index, image format
      segments/<segment>/manifest.jsonl append-only, one JSON record per line
      segments/<segment>/samples/       <id>.<png|jpg|webp> image, <id>.mask.png palette mask
      quarantine.jsonl                  ids that `verify --repair` took out (files under quarantine/)

Each writer owns one segment (created with an atomic ``mkdir``), so writers on one machine or
on many sharing a file system never need a lock. A sample's files are written to temporary
names and renamed into place first; only then is its record appended to the manifest with a
single ``write`` on an ``O_APPEND`` descriptor. A reader takes only complete lines (ending in a
newline), so a crashed writer can leave orphan files or a torn last line, never a visible
partial sample. Readers remember how far they read each manifest: ``refresh()`` reads only
what was appended since.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from synthaug import __version__
from synthaug.imageio import atomic_write_bytes, mask_to_png
from synthaug.sample import Instance, Sample
from synthaug.vocabulary import IGNORE_INDEX, ClassVocabulary

FORMAT_VERSION = 1
STORE_FILE = "store.json"
SEGMENTS = "segments"
MANIFEST = "manifest.jsonl"
QUARANTINE = "quarantine.jsonl"
RETIRED = "retired.jsonl"
#: The snapshot key that holds how far into retired.jsonl a snapshot has read (not a segment name).
RETIRED_KEY = "#retired"
IMAGE_FORMATS = {"png": ("PNG", {}), "jpg": ("JPEG", {"quality": 95}), "webp": ("WEBP", {"quality": 95})}
SEGMENT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


class StoreError(RuntimeError):
    """A store cannot be opened or written as asked; the message says what to do."""


class StoreVersionError(StoreError):
    """The store was written by a newer synthaug whose format this one cannot read."""


class CorruptSampleError(StoreError):
    """A sample's files do not read back; `reason` says why."""

    def __init__(self, sample_id: str, reason: str) -> None:
        super().__init__(f"sample {sample_id}: {reason}")
        self.sample_id = sample_id
        self.reason = reason


def _read_store_json(path: Path) -> dict[str, Any]:
    meta_file = path / STORE_FILE
    if not meta_file.is_file():
        raise StoreError(
            f"{path} is not a synthaug store (no {STORE_FILE}); create one with synthaug.store.create_store "
            "or `synthaug generate --out PATH`"
        )
    meta = json.loads(meta_file.read_text())
    version = int(meta.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise StoreVersionError(
            f"{path} has store format version {version}, but synthaug {__version__} reads up to version "
            f"{FORMAT_VERSION}: upgrade synthaug (pip install -U synthaug) to read it"
        )
    return meta


def create_store(path: str | Path, vocabulary: ClassVocabulary, image_format: str = "png") -> Path:
    """Create an empty store at `path`, or check that an existing one has the same vocabulary."""
    path = Path(path)
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format={image_format!r}: use one of {sorted(IMAGE_FORMATS)}")
    if (path / STORE_FILE).exists():
        meta = _read_store_json(path)
        ClassVocabulary.from_dict(meta["vocabulary"]).check_same(vocabulary, what="the vocabulary given now")
        return path
    (path / SEGMENTS).mkdir(parents=True, exist_ok=True)
    meta = {
        "format_version": FORMAT_VERSION,
        "vocabulary": vocabulary.to_dict(),
        "ignore_index": IGNORE_INDEX,
        "image_format": image_format,
        "created": time.time(),
        "synthaug_version": __version__,
    }
    # Atomic: of two creators racing, one rename wins and both see a complete file.
    atomic_write_bytes(path / STORE_FILE, (json.dumps(meta, indent=2) + "\n").encode())
    return path


def default_segment_name() -> str:
    """host-pid-random: unique per writer process across machines sharing a file system."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class StoreWriter:
    """Appends samples to this writer's own segment. Not shared between processes: one writer, one segment."""

    def __init__(self, store: str | Path, segment: str | None = None, resume: bool = False, fsync: bool = True):
        self.root = Path(store)
        meta = _read_store_json(self.root)
        self.vocabulary = ClassVocabulary.from_dict(meta["vocabulary"])
        self.image_format = meta.get("image_format", "png")
        self.segment = segment or default_segment_name()
        if not SEGMENT_NAME.match(self.segment):
            raise ValueError(f"segment={self.segment!r}: use letters, digits, '.', '_' and '-' only (at most 128)")
        self.dir = self.root / SEGMENTS / self.segment
        self.fsync = fsync
        try:
            self.dir.mkdir()
        except FileExistsError:
            if not resume:
                raise StoreError(
                    f"segment {self.segment!r} already exists in {self.root}: each writer needs its own "
                    "segment; pass another segment name, or resume=True if this process owns it"
                ) from None
        (self.dir / "samples").mkdir(exist_ok=True)
        manifest = self.dir / MANIFEST
        self.count = self._repair_tail(manifest)
        self._fd = os.open(manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @staticmethod
    def _repair_tail(manifest: Path) -> int:
        """Drop a torn last line left by a crash (readers ignore it anyway); return the record count."""
        if not manifest.exists():
            return 0
        data = manifest.read_bytes()
        end = data.rfind(b"\n") + 1
        if end != len(data):
            with open(manifest, "r+b") as f:
                f.truncate(end)
        return data[:end].count(b"\n")

    def add(self, sample: Sample) -> dict[str, Any]:
        """Write the sample's files, then its record; returns the record."""
        if self._fd < 0:
            raise StoreError("this StoreWriter is closed")
        bad = [c for c in sample.classes_present if c >= len(self.vocabulary)]
        if bad:
            raise ValueError(f"mask has class ids {bad} outside the store's {len(self.vocabulary)} classes")
        sample_id = f"{self.segment}-{self.count:08d}"
        ext = self.image_format
        fmt, opts = IMAGE_FORMATS[ext]
        img_rel = f"{SEGMENTS}/{self.segment}/samples/{sample_id}.{ext}"
        mask_rel = f"{SEGMENTS}/{self.segment}/samples/{sample_id}.mask.png"
        buf = io.BytesIO()
        Image.fromarray(sample.image).save(buf, format=fmt, **opts)
        self._write(self.root / img_rel, buf.getvalue())
        buf = io.BytesIO()
        mask_to_png(sample.mask, self.vocabulary.palette).save(buf, format="PNG")
        self._write(self.root / mask_rel, buf.getvalue())
        record = {
            "id": sample_id,
            "image": img_rel,
            "mask": mask_rel,
            "height": int(sample.mask.shape[0]),
            "width": int(sample.mask.shape[1]),
            "prompt": sample.prompt,
            "seed": sample.seed,
            "classes": sample.classes_present,
            "instances": [i.to_dict() for i in sample.instances],
            "quality": {k: float(v) for k, v in sample.quality.items()},
            "fingerprint": sample.fingerprint,
            "created": time.time(),
        }
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        written = os.write(self._fd, line)
        if written != len(line):  # a short write leaves a torn line, which readers skip; say so
            raise StoreError(f"short write to {self.dir / MANIFEST} ({written} of {len(line)} bytes): disk full?")
        if self.fsync:
            os.fsync(self._fd)
        self.count += 1
        return record

    def _write(self, path: Path, data: bytes) -> None:
        if self.fsync:
            atomic_write_bytes(path, data)
        else:
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class ReadStats:
    """What a reader met: bad manifest lines, and samples skipped as corrupt (id -> reason)."""

    bad_lines: int = 0
    corrupt: dict[str, str] = field(default_factory=dict)


def wait_for_store(path: str | Path, timeout: float) -> bool:
    """Wait up to `timeout` seconds for a store to exist at `path` (a starting producer creates it once its
    model has loaded); True if it does."""
    deadline = time.monotonic() + timeout
    while not (Path(path) / STORE_FILE).exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True


def record_segment(record: dict[str, Any]) -> str:
    """The segment a record was written to (its image lives in segments/<segment>/)."""
    return record["image"].split("/")[1]


def record_position(record: dict[str, Any]) -> int:
    """The record's position in its segment: the writer's running count, the suffix of its id."""
    return int(record["id"].rsplit("-", 1)[1])


class SampleStore:
    """Read access to a store: records in arrival order per segment, incremental refresh, fast reads."""

    def __init__(self, path: str | Path) -> None:
        self.root = Path(path)
        self.meta = _read_store_json(self.root)
        self.vocabulary = ClassVocabulary.from_dict(self.meta["vocabulary"])
        self.records: list[dict[str, Any]] = []  # live: neither quarantined nor retired
        self.all_records: list[dict[str, Any]] = []  # also the retired ones, which snapshots may still hold
        self.retired: dict[str, int] = {}  # id -> end offset of its line in retired.jsonl
        self.retired_at: dict[str, float] = {}  # id -> when it was retired
        self.stats = ReadStats()
        self._offsets: dict[str, int] = {}
        self._quarantine_offset = 0
        self._retired_offset = 0
        self._quarantined: set[str] = set()
        self.refresh()

    def refresh(self) -> int:
        """Adopt records appended since the last call; returns how many are new."""
        self._read_quarantine()
        self._read_retired()
        seg_root = self.root / SEGMENTS
        new = 0
        try:
            segments = sorted(e.name for e in os.scandir(seg_root) if e.is_dir())
        except FileNotFoundError:
            segments = []
        for seg in segments:
            manifest = seg_root / seg / MANIFEST
            offset = self._offsets.get(seg, 0)
            try:
                size = manifest.stat().st_size
            except FileNotFoundError:
                continue
            if size <= offset:
                continue
            with open(manifest, "rb") as f:
                f.seek(offset)
                chunk = f.read(size - offset)
            end = chunk.rfind(b"\n") + 1  # complete lines only; a torn tail waits for its newline
            for line in chunk[:end].splitlines():
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    rec["id"]
                except (ValueError, KeyError, TypeError):
                    self.stats.bad_lines += 1
                    continue
                if rec["id"] in self._quarantined:
                    continue
                self.all_records.append(rec)
                if rec["id"] not in self.retired:
                    self.records.append(rec)
                new += 1
            self._offsets[seg] = offset + end
        return new

    def _read_quarantine(self) -> None:
        qfile = self.root / QUARANTINE
        try:
            with open(qfile, "rb") as f:
                f.seek(self._quarantine_offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1
        added = {json.loads(line)["id"] for line in chunk[:end].splitlines() if line.strip()}
        self._quarantine_offset += end
        if added - self._quarantined:
            self._quarantined |= added
            self.records = [r for r in self.records if r["id"] not in self._quarantined]
            self.all_records = [r for r in self.all_records if r["id"] not in self._quarantined]

    def _read_retired(self) -> None:
        try:
            with open(self.root / RETIRED, "rb") as f:
                f.seek(self._retired_offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        end = chunk.rfind(b"\n") + 1
        pos = self._retired_offset
        added = False
        for line in chunk[:end].splitlines(keepends=True):
            pos += len(line)
            if line.strip():
                entry = json.loads(line)
                self.retired[entry["id"]] = pos
                self.retired_at[entry["id"]] = entry["time"]
                added = True
        self._retired_offset += end
        if added:
            self.records = [r for r in self.records if r["id"] not in self.retired]

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records)

    def read(self, index: int) -> Sample:
        """Decode sample `index`; raises CorruptSampleError if its files are missing or broken."""
        return self.read_record(self.records[index])

    def read_record(self, rec: dict[str, Any]) -> Sample:
        """Decode the sample of manifest record `rec`; raises CorruptSampleError if its files are broken."""
        try:
            with Image.open(self.root / rec["image"]) as im:
                image = np.asarray(im.convert("RGB"))
            with Image.open(self.root / rec["mask"]) as im:
                mask = np.asarray(im)
        except (OSError, ValueError, SyntaxError) as err:  # PIL raises these for missing/truncated/garbled files
            raise CorruptSampleError(rec["id"], f"{type(err).__name__}: {err}") from None
        if mask.ndim != 2 or mask.shape != image.shape[:2] or mask.shape != (rec["height"], rec["width"]):
            raise CorruptSampleError(
                rec["id"],
                f"mask {mask.shape} / image {image.shape[:2]} do not match the record's {rec['height']}x{rec['width']}",
            )
        try:
            instances = [Instance.from_dict(d) for d in rec.get("instances", [])]
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptSampleError(rec["id"], f"instances: {err}") from None
        return Sample(
            image,
            mask,
            instances,
            rec.get("prompt", ""),
            rec.get("seed"),
            rec.get("quality", {}),
            rec.get("fingerprint", {}),
            rec["id"],
        )

    def try_read(self, index: int) -> Sample | None:
        """Like read(), but a corrupt sample is counted in `stats.corrupt` and None is returned."""
        return self.try_read_record(self.records[index])

    def try_read_record(self, rec: dict[str, Any]) -> Sample | None:
        """Like read_record(), but a corrupt sample is counted in `stats.corrupt` and None is returned."""
        try:
            return self.read_record(rec)
        except CorruptSampleError as err:
            self.stats.corrupt[err.sample_id] = err.reason
            return None

    def snapshot(self) -> dict[str, int]:
        """The records adopted so far, as {segment: count} plus how far retirements were read (RETIRED_KEY):
        the same list on every reader that adopts it."""
        out: dict[str, int] = {}
        for rec in self.all_records:
            seg, pos = record_segment(rec), record_position(rec)
            out[seg] = max(out.get(seg, 0), pos + 1)
        out[RETIRED_KEY] = self._retired_offset
        return out

    def snapshot_records(self, snapshot: dict[str, int]) -> list[dict[str, Any]]:
        """The records of `snapshot` in canonical order (segment, position), retirements applied as it saw them."""
        until = snapshot.get(RETIRED_KEY, 0)
        chosen = [
            r
            for r in self.all_records
            if record_position(r) < snapshot.get(record_segment(r), 0) and self.retired.get(r["id"], until + 1) > until
        ]
        chosen.sort(key=lambda r: (record_segment(r), record_position(r)))
        return chosen

    def holds(self, snapshot: dict[str, int]) -> bool:
        """Whether this reader has read everything `snapshot` names (a lagging file system may not show it yet)."""
        have = self.snapshot()
        return all(have.get(k, 0) >= n for k, n in snapshot.items())

    def select(
        self,
        classes: Iterable[int | str] | None = None,
        min_quality: dict[str, float] | None = None,
        fingerprint: dict[str, Any] | None = None,
    ) -> list[int]:
        """Indices of records that contain any of `classes`, clear every `min_quality` figure, and match
        every key of `fingerprint`."""
        wanted = None
        if classes is not None:
            wanted = {c if isinstance(c, int) else self.vocabulary.id_of(c) for c in classes}
        out = []
        for i, rec in enumerate(self.records):
            if wanted is not None and not wanted.intersection(rec.get("classes", ())):
                continue
            q = rec.get("quality", {})
            if min_quality and any(q.get(k, float("-inf")) < v for k, v in min_quality.items()):
                continue
            fp = rec.get("fingerprint", {})
            if fingerprint and any(fp.get(k) != v for k, v in fingerprint.items()):
                continue
            out.append(i)
        return out


READERS = "readers"
#: A reader lease older than this is taken for a reader that is gone (crashed, or finished without cleaning up).
READER_LEASE_TTL_S = 6 * 3600.0


def write_reader_lease(store: str | Path, snapshot: dict[str, int], reader: str = "") -> None:
    """Tell producers which retirements this reader's snapshot has seen: files of samples retired after it
    are not deleted while this lease is fresh. `reader` tells apart several readers in one process."""
    lease = {"retired_offset": snapshot.get(RETIRED_KEY, 0), "time": time.time(), "pid": os.getpid()}
    path = Path(store) / READERS / f"{socket.gethostname()}-{os.getpid()}{reader}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(lease).encode())


def reader_floor(store: str | Path, ttl_s: float = READER_LEASE_TTL_S) -> int | None:
    """The smallest retired.jsonl offset a live reader's snapshot has seen (None: no live reader)."""
    now, floor = time.time(), None
    for path in (Path(store) / READERS).glob("*.json"):
        try:
            lease = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if now - lease.get("time", 0) <= ttl_s:
            floor = lease["retired_offset"] if floor is None else min(floor, lease["retired_offset"])
    return floor


def retire(store: str | Path, ids: Iterable[str]) -> int:
    """Mark samples retired (a rolling pool's oldest): new snapshots leave them out; their files stay until
    the producer purges them after a grace period, so a reader holding an older snapshot can still read them."""
    now = time.time()
    data = b"".join((json.dumps({"id": i, "time": now}) + "\n").encode() for i in ids)
    if not data:
        return 0
    fd = os.open(Path(store) / RETIRED, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return data.count(b"\n")


def merge_into(dst: str | Path, src: str | Path) -> int:
    """Copy every segment of store `src` into store `dst`; refuses stores with different vocabularies."""
    import shutil

    d, s = SampleStore(dst), SampleStore(src)
    d.vocabulary.check_same(s.vocabulary, what=f"store {src}")
    copied = 0
    for seg_dir in sorted((s.root / SEGMENTS).iterdir()):
        target = d.root / SEGMENTS / seg_dir.name
        if target.exists():
            raise StoreError(f"segment {seg_dir.name!r} exists in both stores; rename it in {src} first")
        shutil.copytree(seg_dir, target)
        copied += 1
    return copied

"""The on-disk sample store: many writers without a shared lock, crash-safe records, incremental readers.

    STORE/
      store.json                        format version, class vocabulary, ignore index, image format
      segments/<segment>/manifest.jsonl append-only, one JSON record per line
      segments/<segment>/manifest.index columnar, memory-mapped copy of a sealed segment's records (a cache)
      segments/<segment>/samples/       <id>.<png|jpg|webp> image, <id>.mask.png palette mask
      segments/<segment>/writer.lock    flock held by the segment's live writer (names its pid and host)
      retired.jsonl                     ids a rolling producer retired
      quarantine.jsonl                  ids that `verify --repair` took out (their files under quarantine/)

Each writer owns one segment (created with an atomic ``mkdir``), so writers on one machine or
on many sharing a file system never wait for each other. A sample's files are written to temporary
names and renamed into place first; only then is its record appended to the manifest with a
single ``write`` on an ``O_APPEND`` descriptor. A reader takes only complete lines (ending in a
newline), so a crashed writer can leave orphan files or a torn last line, never a visible
partial sample. Readers remember how far they read each manifest: ``refresh()`` reads only
what was appended since.

Every line of every log file is parsed on its own: a bad line, or a record that is malformed or
names a path outside its segment (see synthaug.store_check), is skipped, counted and kept in
``stats.problems`` with its file and line. Nothing is fatal but a missing store. Sample files are
opened relative to their segment's samples/ folder, checked to lie inside the store, and never
through a symbolic link. Files are created with the permissions the umask gives (0644 under 022),
so other users can read a shared store; a file they may not read is "permission denied", not corrupt.

A reader holds records as columns per segment (synthaug.store_rows), not as dicts, so a million records
take tens of megabytes; a segment's index (synthaug.store_index), written when its writer closes it or by
`synthaug index`, gives those columns without parsing its manifest, mapped and shared by every process.
The manifest stays the truth: an index that is stale, torn, foreign or unsafe is reported and ignored.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import logging
import math
import os
import re
import socket
import stat
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from synthaug import __version__, rle
from synthaug.imageio import atomic_write_bytes, mask_to_png
from synthaug.sample import Instance, Sample
from synthaug.store_check import (
    ID_FORM,
    MAX_PROBLEMS,
    SEGMENT_NAME,
    Problem,
    UnsafePathError,
    check_record,
    is_plain_dir,
    parse_lines,
    read_complete_lines,
    real_root,
    resolve_inside,
)
from synthaug.store_index import INDEX_FILE, BadIndex, ingest_manifest, load_index, write_index
from synthaug.store_lock import WRITER_LOCK, FileLock, LockHeld
from synthaug.store_rows import Record, RecordLineError, RecordList, SegmentRows, parse_id
from synthaug.vocabulary import IGNORE_INDEX, ClassVocabulary

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STORE_FILE = "store.json"
SEGMENTS = "segments"
MANIFEST = "manifest.jsonl"
QUARANTINE = "quarantine.jsonl"
RETIRED = "retired.jsonl"
#: The snapshot key that holds how far into retired.jsonl a snapshot has read (not a segment name).
RETIRED_KEY = "#retired"
IMAGE_FORMATS = {"png": ("PNG", {}), "jpg": ("JPEG", {"quality": 95}), "webp": ("WEBP", {"quality": 95})}


class StoreError(RuntimeError):
    """A store cannot be opened or written as asked; the message says what to do."""


class StoreVersionError(StoreError):
    """The store was written by a newer synthaug whose format this one cannot read."""


class StoreGoneError(StoreError):
    """The store was deleted (or unmounted) under a reader: nothing in it can be read any more."""


class SampleAccessError(StoreError):
    """A sample's file exists but this user may not read it: a permission problem, not corruption."""

    def __init__(self, sample_id: str, reason: str) -> None:
        super().__init__(f"sample {sample_id}: {reason}")
        self.sample_id = sample_id
        self.reason = reason


class CorruptSampleError(StoreError):
    """A sample's files do not read back; `reason` says why."""

    def __init__(self, sample_id: str, reason: str) -> None:
        super().__init__(f"sample {sample_id}: {reason}")
        self.sample_id = sample_id
        self.reason = reason


class UnsafeRecordError(CorruptSampleError):
    """A record's file resolves outside the store (a symbolic link out of it): never read, moved or deleted."""


def _permission_message(path: Path | str, what: str) -> str:
    """'permission denied' with the file's owner and mode, and the fix."""
    try:
        st = os.stat(path)
        owner = f"owned by uid {st.st_uid}, mode {stat.filemode(st.st_mode)}"
    except OSError:
        owner = "owner unknown"
    return (
        f"permission denied reading {what} {path} ({owner}; this is uid {os.getuid()}): not corruption; "
        "ask the owner to make it readable (chmod a+r), or run as a user who can read it"
    )


def _read_store_json(path: Path) -> dict[str, Any]:
    """store.json of the store at `path`, checked: a StoreError names what is wrong and what to do."""
    meta_file = path / STORE_FILE
    if not meta_file.is_file():
        raise StoreError(
            f"{path} is not a synthaug store (no {STORE_FILE}); create one with synthaug.store.create_store "
            "or `synthaug generate --out PATH`"
        )
    try:
        meta = json.loads(meta_file.read_bytes())
        version = int(meta.get("format_version", 0))
        ClassVocabulary.from_dict(meta["vocabulary"])
    except PermissionError:
        raise StoreError(_permission_message(meta_file, "the store description")) from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise StoreError(
            f"{meta_file} is not a valid store description ({type(err).__name__}: {err}): restore it from a copy, "
            "or copy store.json from a store written with the same vocabulary"
        ) from None
    if version > FORMAT_VERSION:
        raise StoreVersionError(
            f"{path} has store format version {version}, but synthaug {__version__} reads up to version "
            f"{FORMAT_VERSION}: upgrade synthaug (pip install -U synthaug) to read it"
        )
    return meta


def store_vocabulary(path: str | Path) -> ClassVocabulary:
    """The class vocabulary of the store at `path` (a StoreError that says what to do if it is not a store)."""
    return ClassVocabulary.from_dict(_read_store_json(Path(path))["vocabulary"])


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
    """Appends samples to this writer's own segment. Not shared between processes: one writer, one segment.

    It holds the segment's writer.lock while open, so `verify --repair` leaves its in-flight files alone;
    `lock_wait_s` is how long it waits for a repair that holds the segment for a moment. It keeps the columns
    of its segment's records as it appends (see synthaug.store_rows) and, with `index` (the default), writes
    the segment's index when it closes: closing seals the segment (see synthaug.store_index).
    """

    def __init__(
        self,
        store: str | Path,
        segment: str | None = None,
        resume: bool = False,
        fsync: bool = True,
        lock_wait_s: float = 30.0,
        index: bool = True,
    ):
        self.root = Path(store)
        meta = _read_store_json(self.root)
        self.vocabulary = ClassVocabulary.from_dict(meta["vocabulary"])
        self.image_format = meta.get("image_format", "png")
        self.segment = segment or default_segment_name()
        if not SEGMENT_NAME.match(self.segment):
            raise ValueError(f"segment={self.segment!r}: use letters, digits, '.', '_' and '-' only (at most 128)")
        self.dir = self.root / SEGMENTS / self.segment
        self.fsync = fsync
        self.index = index
        self._fd = -1
        self._broken: str | None = None
        self._make_segment(resume)
        self._lock = self._take_lock(lock_wait_s)
        manifest = self.dir / MANIFEST
        self.count = self._repair_tail(manifest)
        self._fd = os.open(manifest, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        self._rows, self._indexed = self._load_rows() if index else (None, -1)

    def _load_rows(self) -> tuple[SegmentRows | None, int]:
        """The segment's records so far as columns (its index, if it has a good one, then the lines after it),
        and how far into the manifest the index on disk reaches (-1: none). (None, -1) if the manifest cannot
        be read back: the writer then writes no index."""
        rows = SegmentRows(self.segment, tuple(IMAGE_FORMATS), len(self.vocabulary), self.dir / MANIFEST)
        indexed = -1
        try:
            base = load_index(self.dir, self.segment, rows.exts, rows.n_classes)
        except BadIndex:
            base = None  # rewritten when this writer closes
        if base is not None:
            rows.set_base(base)
            indexed = base.covered_bytes
        try:
            ingest_manifest(rows, self.dir / MANIFEST)
        except OSError as err:
            log.warning("synthaug: segment %s: its manifest does not read back (%s); no index", self.segment, err)
            return None, -1
        return rows, indexed

    def _make_segment(self, resume: bool) -> None:
        """Create this writer's segment folder (or, with resume, check the existing one is a real folder)."""
        try:
            self.dir.mkdir()
        except FileExistsError:
            if not resume:
                raise StoreError(
                    f"segment {self.segment!r} already exists in {self.root}: each writer needs its own "
                    "segment; pass another segment name, or resume=True if this process owns it"
                ) from None
        for folder in (self.dir, self.dir / "samples"):
            if not folder.exists():
                folder.mkdir()
            if not is_plain_dir(folder):
                raise StoreError(
                    f"{folder} is a symbolic link or not a folder: a writer writes only inside the store; "
                    "replace it with a real folder (or use another segment name)"
                )

    def _take_lock(self, wait_s: float) -> FileLock:
        """The segment's writer lock; a StoreError naming the holder if another process keeps it past `wait_s`."""
        try:
            return FileLock(self.dir / WRITER_LOCK, role="writer").acquire(wait_s)
        except LockHeld as held:
            raise StoreError(
                f"segment {self.segment!r} of {self.root} is held by {held.holder}: one writer per segment; "
                "wait for it to stop, or use another segment name"
            ) from None

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
        if self._broken:
            raise StoreError(self._broken)
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
        record = {
            "id": sample_id,
            "image": img_rel,
            "mask": mask_rel,
            "height": int(sample.mask.shape[0]),
            "width": int(sample.mask.shape[1]),
            "prompt": sample.prompt,
            "seed": None if sample.seed is None else int(sample.seed),
            "classes": sample.classes_present,
            "instances": [i.to_dict() for i in sample.instances],
            "quality": {k: float(v) for k, v in sample.quality.items()},
            "fingerprint": sample.fingerprint,
            "created": time.time(),
        }
        # The record is checked as readers will check it before any file is written: a record readers
        # would reject (a NaN quality figure, a prompt that is not text) must never be committed.
        problem = check_record(record, self.segment, len(self.vocabulary), tuple(IMAGE_FORMATS))
        if problem:
            raise ValueError(f"sample not written: its record would be a {problem[0]}: {problem[1]}")
        line = (json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode()
        buf = io.BytesIO()
        Image.fromarray(sample.image).save(buf, format=fmt, **opts)
        self._write(self.root / img_rel, buf.getvalue())
        buf = io.BytesIO()
        mask_to_png(sample.mask, self.vocabulary.palette).save(buf, format="PNG")
        self._write(self.root / mask_rel, buf.getvalue())
        self._append(line)
        self.count += 1
        if self._rows is not None:
            rows = self._rows
            rows.add(record, rows.covered_bytes, len(line), zlib.crc32(line), rows.covered_lines + 1)
            rows.covered_bytes += len(line)
            rows.covered_lines += 1
        return record

    def _append(self, line: bytes) -> None:
        """Append one record line; after a short or failed write, stop appending to this segment for good."""
        manifest = self.dir / MANIFEST
        try:
            written = os.write(self._fd, line)
            err = None
        except OSError as exc:
            written, err = -1, exc
        if written == len(line):
            if self.fsync:
                os.fsync(self._fd)
            return
        what = f"wrote {written} of {len(line)} bytes" if written >= 0 else f"{err}"
        self._broken = (
            f"short write to {manifest} ({what}; disk full or over quota?): this writer stopped appending to "
            f"segment {self.segment!r}. Its first {self.count} records are safe; the torn last line is invisible "
            "to readers and is dropped when a writer resumes the segment (StoreWriter(resume=True)) after "
            "space is freed"
        )
        self.close()
        raise StoreError(self._broken) from err

    def _write(self, path: Path, data: bytes) -> None:
        """Write a sample file under a temporary name and rename it into place (fsynced when asked)."""
        if self.fsync:
            atomic_write_bytes(path, data)
            return
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:6]}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def close(self) -> None:
        """Close the manifest, write the segment's index (it is sealed now) and release its lock (idempotent).
        An index that cannot be written is warned about, never fatal: readers then parse the manifest."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._write_index()
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    def _write_index(self) -> None:
        rows = getattr(self, "_rows", None)
        if rows is None or self._broken or rows.covered_bytes == self._indexed:
            return
        try:
            write_index(self.dir, rows, fsync=self.fsync)
            self._indexed = rows.covered_bytes
        except OSError as err:
            log.warning("synthaug: no index written for segment %s (%s); readers parse its manifest", self.segment, err)

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class ReadStats:
    """What a reader met: lines skipped in log files, samples skipped as corrupt or unreadable (id -> reason),
    each problem with its file and line (the first MAX_PROBLEMS of them), and how many records it took from
    segment indexes (`indexed`) and from manifest lines it parsed (`parsed`)."""

    bad_lines: int = 0
    corrupt: dict[str, str] = field(default_factory=dict)
    denied: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    indexed: int = 0
    parsed: int = 0


def wait_for_store(path: str | Path, timeout: float) -> bool:
    """Wait up to `timeout` seconds for a store to exist at `path` (a starting producer creates it once its
    model has loaded); True if it does."""
    deadline = time.monotonic() + timeout
    while not (Path(path) / STORE_FILE).exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.5)
    return True


def record_segment(record: Mapping[str, Any]) -> str:
    """The segment a record was written to (its image lives in segments/<segment>/)."""
    return record["image"].split("/")[1]


def record_position(record: Mapping[str, Any]) -> int:
    """The record's position in its segment: the writer's running count, the suffix of its id."""
    return int(record["id"].rsplit("-", 1)[1])


@dataclass
class _Cursor:
    """How far a reader has read one log file: byte offset and the number of the next line."""

    offset: int = 0
    line: int = 1


#: Manifest bytes a reader parses at a time (a million records are about a gigabyte of lines).
_MANIFEST_BLOCK = 32 << 20


class SampleStore:
    """Read access to a store: records in arrival order per segment, incremental refresh, fast reads.

    Records are held as columns per segment (synthaug.store_rows), not as dicts: `records` (live: neither
    quarantined nor retired) and `all_records` (retired ones too, which snapshots may still hold) are list-like
    RecordLists of read-only Record mappings. With `index` (the default), a segment's index file
    (synthaug.store_index) gives its rows without parsing its manifest; a missing, stale or bad index only makes
    opening slower (a bad one is counted in `stats.problems`). `location(rec)` gives the (manifest, line) of a
    record, for reports (`track_lines` is accepted for compatibility: lines are always known).
    """

    def __init__(self, path: str | Path, track_lines: bool = False, index: bool = True) -> None:
        self.root = Path(path)
        self.meta = _read_store_json(self.root)
        self.vocabulary = ClassVocabulary.from_dict(self.meta["vocabulary"])
        self.use_index = index
        self.retired: dict[str, int] = {}  # id -> end offset of its line in retired.jsonl
        self.retired_at: dict[str, float] = {}  # id -> when it was retired
        self.stats = ReadStats()
        self._root_real = real_root(self.root)
        self._exts = tuple(IMAGE_FORMATS)
        self._valid_ids = np.zeros(256, dtype=bool)
        self._valid_ids[: len(self.vocabulary)] = True
        self._valid_ids[IGNORE_INDEX] = True
        self._cursors: dict[str, _Cursor] = {}
        self._segments: dict[str, SegmentRows] = {}
        self._arrivals: list[tuple[SegmentRows, int, int]] = []  # rows [start, stop) of a segment, as adopted
        self._quarantined_keys: dict[str, set[int]] = {}  # segment -> id keys (store_rows.id_key)
        self._retired_keys: dict[str, dict[int, int]] = {}  # segment -> id key -> end offset in retired.jsonl
        self._version = 0  # moves whenever the adopted records, quarantine or retirements change
        self._views: dict[str, tuple[int, Any]] = {}
        self._dir_fds: dict[str, int] = {}
        self._line_fds: dict[str, int] = {}
        self._instances_ok: set[str] = set()
        self._reported: set[str] = set()
        self._quarantined: set[str] = set()
        self.refresh()

    @property
    def _retired_offset(self) -> int:
        """How far into retired.jsonl this reader has read (bytes)."""
        return self._cursor(RETIRED).offset

    def _cursor(self, rel: str) -> _Cursor:
        """The read position in log file `rel` (created at its start)."""
        return self._cursors.setdefault(rel, _Cursor())

    def problem(self, file: str, line: int, kind: str, message: str) -> None:
        """Count and keep one problem found while reading (a line problem also counts as a bad line)."""
        if line:
            self.stats.bad_lines += 1
        elif f"{file}:{kind}" in self._reported:
            return  # a whole-file problem is reported once, not at every refresh
        else:
            self._reported.add(f"{file}:{kind}")
        if len(self.stats.problems) < MAX_PROBLEMS:
            self.stats.problems.append(Problem(file, line, kind, message))

    def refresh(self) -> int:
        """Adopt records appended since the last call; returns how many are new.

        Raises StoreGoneError if the store itself was deleted; every other problem is counted and skipped.
        """
        self._check_not_gone()
        self._read_quarantine()
        self._read_retired()
        return sum(self._read_manifest(seg) for seg in self.segment_names())

    def segment_names(self) -> list[str]:
        """Names of the segment folders that are safe to read (real folders named as writers name them)."""
        return list_segments(self.root, self.problem)

    def _log_chunk(self, rel: str, offset: int, limit: int | None = None) -> bytes:
        """The complete lines of log file `rel` from byte `offset` (at most about `limit` bytes; b'' if none, missing
        or unsafe)."""
        path = self.root / rel
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return b""
        if not stat.S_ISREG(st.st_mode):
            self.problem(rel, 0, "unsafe file", "is a symbolic link or not a plain file: never read")
            return b""
        if st.st_size <= offset:
            return b""
        try:
            return read_complete_lines(path, offset, limit)
        except PermissionError:
            self.problem(rel, 0, "permission denied", _permission_message(path, "log file"))
        except OSError as err:  # swapped for a link since the check above
            self.problem(rel, 0, "unsafe file", f"cannot be read safely ({err.strerror}): never read")
        return b""

    def _read_manifest(self, seg: str) -> int:
        """Adopt the new complete lines of one segment's manifest (after its index, when it has a good one);
        returns how many records were new."""
        rel = f"{SEGMENTS}/{seg}/{MANIFEST}"
        rows = self._segments.get(seg)
        start = len(rows) if rows is not None else 0
        if rows is None:
            rows = self._segments[seg] = SegmentRows(seg, self._exts, len(self.vocabulary), self.root / rel)
            if self.use_index:
                self._adopt_index(seg, rows)

        def report(line: int, kind: str, message: str) -> None:
            self.problem(rel, line, kind, message)

        while chunk := self._log_chunk(rel, rows.covered_bytes, _MANIFEST_BLOCK):
            self.stats.parsed += rows.ingest(chunk, report)
        if len(rows) == start:
            return 0
        self._arrivals.append((rows, start, len(rows)))
        self._version += 1
        quarantined = self._quarantined_keys.get(seg)
        if not quarantined:
            return len(rows) - start
        return len(rows) - start - int(np.isin(rows.keys(slice(start, len(rows))), list(quarantined)).sum())

    def _adopt_index(self, seg: str, rows: SegmentRows) -> None:
        """Start segment `seg` from its index if it has a usable one (its bad lines reported as a parse would);
        a bad index is reported and left alone: the manifest is parsed instead."""
        try:
            base = load_index(self.root / SEGMENTS / seg, seg, self._exts, len(self.vocabulary))
        except BadIndex as err:
            self.problem(f"{SEGMENTS}/{seg}/{INDEX_FILE}", 0, err.kind, err.message)
            return
        if base is None:
            return
        rows.set_base(base)
        rel = f"{SEGMENTS}/{seg}/{MANIFEST}"
        for line, kind, message in base.problems:
            self.problem(rel, line, kind, message)
        self.stats.bad_lines += base.bad_lines - len(base.problems)  # beyond what the index kept by line
        self.stats.indexed += base.rows

    def _id_lines(self, rel: str, *required: str) -> Iterator[tuple[int, dict[str, Any]]]:
        """(end offset, entry) of each new valid line of log `rel`: an object whose 'id' has the record id form
        and that has the `required` numeric keys; other lines are reported and skipped."""
        cur = self._cursor(rel)
        chunk = self._log_chunk(rel, cur.offset)
        start = cur.offset
        for number, end, entry in parse_lines(chunk, cur.line):
            ok = isinstance(entry, dict) and isinstance(entry.get("id"), str) and ID_FORM.match(entry["id"])
            ok = ok and all(isinstance(entry.get(k), (int, float)) for k in required)
            if ok:
                yield start + end, entry
            else:
                why = str(entry) if isinstance(entry, Exception) else f"{entry!r:.80} lacks a valid 'id'"
                self.problem(rel, number, "bad line", why + (f" or a number for {required}" if required else ""))
        cur.offset += len(chunk)
        cur.line += chunk.count(b"\n")

    def _read_quarantine(self) -> None:
        """Adopt new quarantine.jsonl entries: their samples leave `records` and `all_records`."""
        added = {entry["id"] for _, entry in self._id_lines(QUARANTINE)} - self._quarantined
        for sid in added:
            seg, key = parse_id(sid)  # type: ignore[misc]  # ID_FORM matched
            self._quarantined_keys.setdefault(seg, set()).add(key)
        if added:
            self._quarantined |= added
            self._version += 1

    def _read_retired(self) -> None:
        """Adopt new retired.jsonl entries: their samples leave `records` (snapshots may still hold them)."""
        for end, entry in self._id_lines(RETIRED, "time"):
            self.retired[entry["id"]] = end
            self.retired_at[entry["id"]] = float(entry["time"])
            seg, key = parse_id(entry["id"])  # type: ignore[misc]  # ID_FORM matched
            self._retired_keys.setdefault(seg, {})[key] = end
            self._version += 1

    # ------------------------------------------------------------------------------ the records, as views

    def _view(self, name: str, make: Any) -> Any:
        """A view computed from the adopted records, kept until they, the quarantine or retirements change."""
        hit = self._views.get(name)
        if hit is None or hit[0] != self._version:
            hit = self._views[name] = (self._version, make())
        return hit[1]

    def _excluded(self, seg: str, retired_until: int | None) -> np.ndarray | None:
        """Id keys of segment `seg` that a view leaves out: quarantined ones, and those retired in retired.jsonl
        up to byte `retired_until` (None: no retirement excludes)."""
        keys = set(self._quarantined_keys.get(seg, ()))
        if retired_until is not None:
            keys.update(k for k, end in self._retired_keys.get(seg, {}).items() if end <= retired_until)
        return np.fromiter(keys, dtype=np.int64, count=len(keys)) if keys else None

    def _arrival_view(self, retired_until: int | None) -> RecordList:
        runs: list[tuple[SegmentRows, slice | np.ndarray]] = []
        excluded: dict[str, np.ndarray | None] = {}
        for rows, start, stop in self._arrivals:
            if rows.name not in excluded:
                excluded[rows.name] = self._excluded(rows.name, retired_until)
            drop = excluded[rows.name]
            span = slice(start, stop)
            if drop is not None:
                keep = ~np.isin(rows.keys(span), drop)
                span = span if keep.all() else np.arange(start, stop)[keep]
            runs.append((rows, span))
        return RecordList(runs)

    @property
    def records(self) -> RecordList:
        """The live records (neither quarantined nor retired), in the order this reader adopted them."""
        return self._view("records", lambda: self._arrival_view(retired_until=1 << 62))

    @property
    def all_records(self) -> RecordList:
        """Every record adopted but the quarantined ones (retired ones too, which snapshots may still hold)."""
        return self._view("all_records", lambda: self._arrival_view(retired_until=None))

    @property
    def version(self) -> int:
        """A number that changes whenever the records this reader holds, its quarantine or its retirements change
        (what a snapshot's records are depends on nothing else)."""
        return self._version

    def segment_rows(self, seg: str) -> SegmentRows | None:
        """The columns of segment `seg` as this reader holds them (None if it has not read that segment)."""
        return self._segments.get(seg)

    def location(self, rec: Mapping[str, Any]) -> tuple[str, int]:
        """(manifest, line number) of record `rec`, for reports that name them."""
        rel = f"{SEGMENTS}/?/{MANIFEST}"
        if isinstance(rec, Record):
            return f"{SEGMENTS}/{rec.rows.name}/{MANIFEST}", int(rec.rows.col("line")[rec.row])
        parsed = parse_id(rec["id"]) if isinstance(rec.get("id"), str) else None
        rows = self._segments.get(parsed[0]) if parsed else None
        found = rows.find(parsed[1]) if rows is not None and parsed else ()
        if len(found):
            return f"{SEGMENTS}/{rows.name}/{MANIFEST}", int(rows.col("line")[found[0]])
        return rel, 0

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def path_of(self, rec: Mapping[str, Any], key: str) -> str:
        """The real path of a record's 'image' or 'mask' file, checked to stay inside the store (symbolic links
        resolved); raises UnsafeRecordError otherwise. Use it before reading, copying or linking a file."""
        try:
            return resolve_inside(self._root_real, self.root, rec[key])
        except UnsafePathError as err:
            raise UnsafeRecordError(
                rec["id"], f"unsafe record: {key} {err}; it is never read, moved or deleted"
            ) from None

    def read(self, index: int) -> Sample:
        """Decode sample `index`; raises CorruptSampleError if its files are missing or broken."""
        return self.read_record(self.records[index])

    def full_record(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest's dict of record `rec` (a Record's line read back and checked; a dict as it is).
        Raises CorruptSampleError if a Record's line changed since it was checked."""
        if not isinstance(rec, Record):
            return rec  # type: ignore[return-value]
        try:
            return rec.full(self._manifest_fd(rec.rows))
        except RecordLineError as err:
            raise CorruptSampleError(rec["id"], str(err)) from None
        except FileNotFoundError:
            self._check_not_gone()
            raise CorruptSampleError(rec["id"], f"the manifest {rec.rows.manifest} is missing") from None
        except OSError as err:
            raise CorruptSampleError(rec["id"], f"its manifest line cannot be read ({err})") from None

    def _manifest_fd(self, rows: SegmentRows) -> int:
        """A descriptor of a segment's manifest (opened without following links; a few are kept open)."""
        fd = self._line_fds.get(rows.name)
        if fd is None:
            fd = os.open(rows.manifest, os.O_RDONLY | os.O_NOFOLLOW)
            if len(self._line_fds) >= 64:
                os.close(self._line_fds.pop(next(iter(self._line_fds))))
            self._line_fds[rows.name] = fd
        return fd

    def read_record(self, rec: Mapping[str, Any]) -> Sample:
        """Decode the sample of manifest record `rec`; raises CorruptSampleError if its files are broken,
        SampleAccessError if this user may not read them, StoreGoneError if the store was deleted."""
        rec = self.full_record(rec)
        key = "image"
        try:
            with self._open_sample_file(rec, key) as f:
                image = _decode_image(f, rec)
            key = "mask"
            with self._open_sample_file(rec, key) as f:
                mask = _decode_mask(f, rec)
        except PermissionError:
            raise SampleAccessError(rec["id"], _permission_message(self.root / rec[key], "sample file")) from None
        except FileNotFoundError:
            self._check_not_gone()
            raise CorruptSampleError(rec["id"], f"{key} file {rec[key]} is missing") from None
        except UnidentifiedImageError:
            raise CorruptSampleError(rec["id"], f"{Path(rec[key]).name}: not an image PIL can identify") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            raise CorruptSampleError(rec["id"], f"{Path(rec[key]).name}: {type(err).__name__}: {err}") from None
        if not (mask.max(initial=0) < len(self.vocabulary) or self._valid_ids[mask].all()):
            y, x = np.argwhere(~self._valid_ids[mask])[0]
            raise CorruptSampleError(
                rec["id"],
                f"mask pixel ({y}, {x}) has class {mask[y, x]}, not one of the store's {len(self.vocabulary)} "
                f"classes (0..{len(self.vocabulary) - 1}) or {IGNORE_INDEX} (ignore)",
            )
        instances = _instances(rec, check=rec["id"] not in self._instances_ok)
        self._instances_ok.add(rec["id"])
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

    def _open_sample_file(self, rec: dict[str, Any], key: str) -> io.BufferedReader:
        """The record's file, opened relative to its segment's samples/ folder (held open once checked to lie
        inside the store) and never through a symbolic link: nothing outside the store is ever opened."""
        rel = rec[key]
        seg, name = rel.split("/")[1], rel.rsplit("/", 1)[1]
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=self._samples_dir_fd(rec, seg))
        except OSError as err:
            if err.errno != errno.ELOOP:
                raise
            raise UnsafeRecordError(
                rec["id"],
                f"unsafe record: {key} {rel} is a symbolic link (to {os.path.realpath(self.root / rel)}); "
                "it is never read, moved or deleted",
            ) from None
        return os.fdopen(fd, "rb")

    def _samples_dir_fd(self, rec: dict[str, Any], seg: str) -> int:
        """A descriptor of segments/<seg>/samples/, opened once its real path is checked to be inside the store;
        holding it open means a folder swapped for a link later cannot redirect reads (a few are kept)."""
        fd = self._dir_fds.get(seg)
        if fd is not None:
            return fd
        rel = f"{SEGMENTS}/{seg}/samples"
        try:
            real = resolve_inside(self._root_real, self.root, rel)
        except UnsafePathError as err:
            raise UnsafeRecordError(rec["id"], f"unsafe record: {err}; it is never read, moved or deleted") from None
        fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        if len(self._dir_fds) >= 64:
            os.close(self._dir_fds.pop(next(iter(self._dir_fds))))
        self._dir_fds[seg] = fd
        return fd

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (e.g. to a spawned DataLoader worker) without its open descriptors and cached views; segment
        indexes travel as where to map them again (see store_index.IndexData)."""
        return {**self.__dict__, "_dir_fds": {}, "_line_fds": {}, "_views": {}}

    def __del__(self) -> None:
        for fd in (*getattr(self, "_dir_fds", {}).values(), *getattr(self, "_line_fds", {}).values()):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _check_not_gone(self) -> None:
        """Raise StoreGoneError if the store's store.json is gone (a missing file then means a missing store)."""
        if not (self.root / STORE_FILE).exists():
            raise StoreGoneError(
                f"the store {self.root} disappeared ({STORE_FILE} is gone: deleted, moved or unmounted): "
                "these are not corrupt samples; point the reader at the store's new place"
            )

    def try_read(self, index: int) -> Sample | None:
        """Like read(), but a corrupt sample is counted in `stats.corrupt` and None is returned."""
        return self.try_read_record(self.records[index])

    def try_read_record(self, rec: Mapping[str, Any]) -> Sample | None:
        """Like read_record(), but a corrupt or unsafe sample is counted in `stats.corrupt`, one this user may not
        read in `stats.denied`, and None is returned. A deleted store still raises StoreGoneError."""
        try:
            return self.read_record(rec)
        except CorruptSampleError as err:
            self.stats.corrupt[err.sample_id] = err.reason
        except SampleAccessError as err:
            self.stats.denied[err.sample_id] = err.reason
        return None

    def snapshot(self) -> dict[str, int]:
        """The records adopted so far, as {segment: count} plus how far retirements were read (RETIRED_KEY):
        the same list on every reader that adopts it."""
        out = dict(self._view("snapshot", self._segment_counts))
        out[RETIRED_KEY] = self._retired_offset
        return out

    def _segment_counts(self) -> dict[str, int]:
        """{segment: 1 + the highest position of its records that are not quarantined}."""
        out = {}
        for seg, rows in self._segments.items():
            if not len(rows):
                continue
            pos = rows.col("position")
            drop = self._excluded(seg, None)
            if drop is not None:
                pos = pos[~np.isin(rows.keys(slice(0, len(rows))), drop)]
            if len(pos):
                out[seg] = int(pos[-1] if rows.sorted else pos.max()) + 1
        return out

    def snapshot_records(self, snapshot: Mapping[str, int]) -> RecordList:
        """The records of `snapshot` in canonical order (segment, position), retirements applied as it saw them."""
        until = snapshot.get(RETIRED_KEY, 0)
        runs: list[tuple[SegmentRows, slice | np.ndarray]] = []
        for seg in sorted(k for k in snapshot if k in self._segments):
            rows, limit = self._segments[seg], snapshot[seg]
            pos = rows.col("position")
            if rows.sorted:
                chosen: slice | np.ndarray = slice(0, int(np.searchsorted(pos, limit, "left")))
            else:
                chosen = np.flatnonzero(pos < limit)
                chosen = chosen[np.argsort(pos[chosen], kind="stable")]
            drop = self._excluded(seg, until)
            if drop is not None:
                keep = ~np.isin(rows.keys(chosen), drop)
                if not keep.all():
                    chosen = (np.arange(chosen.start, chosen.stop) if isinstance(chosen, slice) else chosen)[keep]
            runs.append((rows, chosen))
        return RecordList(runs)

    def holds(self, snapshot: Mapping[str, int]) -> bool:
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
        recs = self.records
        keep = np.ones(len(recs), dtype=bool)
        if classes is not None:
            wanted = [c if isinstance(c, int) else self.vocabulary.id_of(c) for c in classes]
            offsets, values = recs.classes()
            hit = np.concatenate([[0], np.cumsum(np.isin(values, wanted))])
            keep &= hit[offsets[1:]] > hit[offsets[:-1]]
        for k, v in (min_quality or {}).items():
            keep &= recs.quality(k, missing=-math.inf) >= v
        if fingerprint:
            keep &= _fingerprint_matches(recs, fingerprint)
        return np.flatnonzero(keep).tolist()


def _fingerprint_matches(recs: RecordList, fingerprint: Mapping[str, Any]) -> np.ndarray:
    """Whether each record's fingerprint has every key-value of `fingerprint` (one test per distinct fingerprint)."""

    def match(fp: Mapping[str, Any]) -> bool:
        return all(fp.get(k) == v for k, v in fingerprint.items())

    parts = []
    for rows, chosen in recs.runs:
        table = np.array([match(fp) for fp in rows.fingerprints] + [False], dtype=bool)
        codes = rows.col("fingerprint")[chosen].astype(np.int64)
        unknown = codes >= len(rows.fingerprints)  # NO_FINGERPRINT: read from the manifest line
        part = table[np.minimum(codes, len(rows.fingerprints))]
        row_numbers = np.arange(chosen.start, chosen.stop) if isinstance(chosen, slice) else chosen
        for k in np.flatnonzero(unknown):
            part[k] = match(rows.record(int(row_numbers[k]))["fingerprint"])
        parts.append(part)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def list_segments(root: Path, problem: Callable[[str, int, str, str], None] | None = None) -> list[str]:
    """Names of the segment folders of store `root` that are safe to read (real folders named as writers name
    them); each unsafe entry is passed to `problem` (file, line, kind, message)."""
    problem = problem or (lambda *_: None)
    seg_root = Path(root) / SEGMENTS
    if not is_plain_dir(seg_root):
        if os.path.lexists(seg_root):
            problem(SEGMENTS, 0, "unsafe folder", "is a symbolic link or not a folder: nothing in it is read")
        return []
    try:
        entries = sorted(os.scandir(seg_root), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        why = unsafe_segment(seg_root, e)
        if why:
            problem(f"{SEGMENTS}/{e.name}", 0, "unsafe folder", why)
        elif e.is_dir(follow_symlinks=False):
            out.append(e.name)
    return out


def unsafe_segment(seg_root: Path, entry: os.DirEntry) -> str | None:
    """Why entry `entry` of segments/ must not be read (None when it is a segment folder, or not a folder)."""
    if not SEGMENT_NAME.match(entry.name):
        return "is not named as a writer names a segment: never read, moved or deleted"
    samples = seg_root / entry.name / "samples"
    if entry.is_symlink() or (os.path.lexists(samples) and not is_plain_dir(samples)):
        return "it or its samples/ is a symbolic link: never read, moved or deleted"
    return None


def _decode_image(f: io.BufferedReader, rec: dict[str, Any]) -> np.ndarray:
    """The record's image as (H, W, 3) uint8, after checking its format and size without decoding it."""
    want = IMAGE_FORMATS[rec["image"].rsplit(".", 1)[-1]][0]
    with Image.open(f) as im:
        if im.format != want:
            raise ValueError(f"holds {im.format} data, not the {want} its name says")
        if im.size != (rec["width"], rec["height"]):
            raise ValueError(f"is {im.width}x{im.height}, the record says {rec['width']}x{rec['height']}")
        return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))  # convert() would only copy an RGB one


def _decode_mask(f: io.BufferedReader, rec: dict[str, Any]) -> np.ndarray:
    """The record's mask as (H, W) uint8 class ids, after checking it is an 8-bit PNG of the record's size."""
    with Image.open(f) as im:
        if im.format != "PNG":
            raise ValueError(f"holds {im.format} data, not PNG: a lossy mask has wrong class ids")
        if im.mode not in ("P", "L"):
            raise ValueError(f"is mode {im.mode!r}; masks are 8-bit palette ('P') or greyscale ('L') PNGs")
        if im.size != (rec["width"], rec["height"]):
            raise ValueError(f"is {im.width}x{im.height}, the record says {rec['width']}x{rec['height']}")
        return np.asarray(im)


def _instances(rec: dict[str, Any], check: bool) -> list[Instance]:
    """The record's instances; with `check`, each RLE checked to cover the image exactly (a garbled RLE is
    corruption). A reader checks a record once: records never change."""
    try:
        out = [Instance.from_dict(d) for d in rec.get("instances", [])]
        for inst in out if check else ():
            rle.check(inst.rle, rec["height"], rec["width"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptSampleError(rec["id"], f"instances: {err}") from None
    return out


READERS = "readers"
#: A reader lease older than this is taken for a reader that is gone (crashed, or finished without cleaning up).
READER_LEASE_TTL_S = 6 * 3600.0
#: A reader lease dated further ahead than this is not honoured: clock skew between hosts explains a few seconds,
#: not more; a wrong clock or an edited file would otherwise hold the producer's retirement floor until that time.
LEASE_CLOCK_SKEW_S = 60.0


def plain_subdir(store: str | Path, name: str) -> Path:
    """STORE/<name>, created if missing; an OSError (ELOOP) if it is a symbolic link, so nothing is written
    outside the store through it."""
    path = Path(store) / name
    if not os.path.lexists(path):
        path.mkdir(parents=True, exist_ok=True)
    if not is_plain_dir(path):
        raise OSError(errno.ELOOP, f"{path} is a symbolic link or not a folder; nothing is written through it")
    return path


def write_reader_lease(store: str | Path, snapshot: dict[str, int], reader: str = "") -> None:
    """Tell producers which retirements this reader's snapshot has seen: files of samples retired after it
    are not deleted while this lease is fresh. `reader` tells apart several readers in one process."""
    lease = {"retired_offset": snapshot.get(RETIRED_KEY, 0), "time": time.time(), "pid": os.getpid()}
    folder = plain_subdir(store, READERS)
    atomic_write_bytes(folder / f"{socket.gethostname()}-{os.getpid()}{reader}.json", json.dumps(lease).encode())


def read_lease(path: Path) -> dict[str, Any] | None:
    """A reader lease's JSON if it is a plain file holding an integer retired_offset and a time; else None."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        lease = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    ok = isinstance(lease, dict) and isinstance(lease.get("retired_offset"), int)
    return lease if ok and isinstance(lease.get("time"), (int, float)) else None


def lease_time_problem(lease: dict[str, Any], now: float) -> str | None:
    """Why a lease's time cannot be trusted (None when it can): not finite, or further in the future than
    LEASE_CLOCK_SKEW_S; such a lease is stale, never honoured."""
    ahead = lease["time"] - now
    if not math.isfinite(ahead):
        return f"its time {lease['time']!r} is not a finite number: producers ignore it; remove the file"
    if ahead > LEASE_CLOCK_SKEW_S:
        return (
            f"its time is {ahead:.0f} s in the future (more than the {LEASE_CLOCK_SKEW_S:.0f} s of clock skew "
            "tolerated): producers ignore it; check the reader host's clock and remove the file"
        )
    return None


def lease_is_live(lease: dict[str, Any], now: float, ttl_s: float = READER_LEASE_TTL_S) -> bool:
    """Whether producers honour `lease` at time `now`: written at most `ttl_s` ago, and not dated further ahead than
    clock skew explains."""
    return lease_time_problem(lease, now) is None and now - lease["time"] <= ttl_s


def reader_floor(store: str | Path, ttl_s: float = READER_LEASE_TTL_S) -> int | None:
    """The smallest retired.jsonl offset a live reader's snapshot has seen (None: no live reader).
    Malformed, expired and future-dated lease files are skipped (`verify` reports the malformed and future ones)."""
    now, floor = time.time(), None
    folder = Path(store) / READERS
    if not is_plain_dir(folder):
        return None
    for path in folder.glob("*.json"):
        lease = read_lease(path)
        if lease is not None and lease_is_live(lease, now, ttl_s):
            floor = lease["retired_offset"] if floor is None else min(floor, lease["retired_offset"])
    return floor


def append_log(store: str | Path, name: str, data: bytes) -> None:
    """Append complete lines to log file STORE/<name> in one write (never through a symbolic link)."""
    try:
        fd = os.open(Path(store) / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o666)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise StoreError(f"{Path(store) / name} is a symbolic link: nothing is written through it; remove it") from None
    try:
        written = os.write(fd, data)
    finally:
        os.close(fd)
    if written != len(data):
        raise StoreError(f"short write to {Path(store) / name} ({written} of {len(data)} bytes): disk full?")


def retire(store: str | Path, ids: Iterable[str]) -> int:
    """Mark samples retired (a rolling pool's oldest): new snapshots leave them out; their files stay until
    the producer purges them after a grace period, so a reader holding an older snapshot can still read them."""
    now = time.time()
    data = b"".join((json.dumps({"id": i, "time": now}) + "\n").encode() for i in ids)
    if not data:
        return 0
    append_log(store, RETIRED, data)
    return data.count(b"\n")


def _copy_ignore(folder: str, names: list[str]) -> list[str]:
    """shutil.copytree's ignore: leave out symbolic links (a copy never reads outside its source) and the
    source writer's lock."""
    return [n for n in names if n == WRITER_LOCK or os.path.islink(os.path.join(folder, n))]


def merge_into(dst: str | Path, src: str | Path) -> int:
    """Copy every segment of store `src` into store `dst`; refuses stores with different vocabularies.
    Symbolic links (and segments that are links or oddly named) are left out: they would copy outside files."""
    import shutil

    d, s = SampleStore(dst), SampleStore(src)
    d.vocabulary.check_same(s.vocabulary, what=f"store {src}")
    copied = 0
    for name in s.segment_names():
        target = d.root / SEGMENTS / name
        if target.exists():
            raise StoreError(f"segment {name!r} exists in both stores; rename it in {src} first")
        shutil.copytree(s.root / SEGMENTS / name, target, ignore=_copy_ignore)
        copied += 1
    return copied

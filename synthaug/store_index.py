"""Segment indexes: a compact, memory-mapped columnar copy of a segment's records, derived from its manifest.

    segments/<segment>/manifest.index

The JSON-lines manifest stays the crash-safe log and the truth; the index is a cache of it, so that a
reader opens a million records in a second instead of parsing a million lines, and so that every
process on a machine (DataLoader workers, forked or spawned, and every rank) shares the same mapped
pages instead of each holding its own Python dicts. It holds the columns of synthaug.store_rows
(ids, line offsets and checksums, sizes, classes, created time, quality figures, fingerprints) and
says which part of the manifest it covers: its length in bytes and lines, and a checksum of its last
4 KiB. A reader takes the index's rows and parses only the manifest lines after it.

**Format.** One file: the magic line ``synthaug-index\\n``, an 8-byte little-endian header length, a JSON
header (format version, segment, coverage, row count, image formats, quality keys, fingerprints, the
segment's bad lines by number, and each array's dtype, shape and offset), then the arrays, each aligned
to 64 bytes, with a CRC-32 of them all in the header. One file, because it is replaced with one atomic
rename (temporary name, fsync, rename; permissions from the umask like every store file): a reader sees
the old index or the new one, never a mix (a folder of ``.npy`` files cannot be swapped atomically, and
``.npz`` cannot be memory-mapped). The arrays are read with ``np.frombuffer`` on a read-only ``mmap``,
which is what ``np.load(mmap_mode='r')`` does for one ``.npy``; NumPy is all it needs (pyarrow would be
one more heavy dependency for what is a handful of fixed-width columns).

**Never trusted blindly.** An index that is a symbolic link or not a plain file, torn (shorter than its
header says), garbage, of another format version, for another segment, damaged (its CRC-32 differs),
inconsistent (offsets beyond what it covers, class ids outside the vocabulary ...), or that covers more
than the manifest holds or bytes that changed since (the checksum of the covered tail differs) is not
used: the reader counts a 'bad index' problem for it (see store_check.Problem), never fails, and parses
the manifest as if there were no index, so no record is lost or hidden. A record's full line is read back
only when its sample is read, and checked to be byte for byte the line that was validated (see
store_rows.SegmentRows.read_line).

**Who writes it, and when: sealed segments.** A segment is *sealed* when no process holds its
``writer.lock`` (synthaug.store_lock): its writer closed it, or died (the kernel drops the lock of a dead
process, kill -9 included). Its manifest then changes only if a writer resumes it, and whoever writes
the index first takes that lock, so no line is appended while it reads. Three writers:

- the StoreWriter, on close, from the columns it kept while appending (no re-read of the manifest);
- ``synthaug index STORE`` (store_ops.index_store): every sealed segment whose index is missing, stale or
  bad; the way to index segments of crashed writers, of merged stores, or of an older synthaug;
- ``synthaug verify --repair``, for segments whose index it found bad or stale, or whose lines it blanked.

Readers never write it: training never writes into the store, and a read-only store opens (a sealed
segment without an index is parsed as before, only slower). A segment whose writer is live has no index
or an older one that covers part of it; the reader parses the rest.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthaug import __version__
from synthaug.imageio import atomic_write_bytes
from synthaug.store_check import MAX_PIXELS, MAX_PROBLEMS, read_complete_lines
from synthaug.store_lock import WRITER_LOCK, FileLock
from synthaug.store_rows import CLASS_OFFSETS, CLASS_VALUES, COLUMNS, NO_FINGERPRINT, LineProblem, SegmentRows

INDEX_FILE = "manifest.index"
INDEX_VERSION = 1
MAGIC = b"synthaug-index\n"
#: How much of the covered manifest's end an index checksums, to tell that the manifest it covers is unchanged.
TAIL_BYTES = 4096
_ALIGN = 64
#: Read manifests in blocks of about this many bytes (a million records are about a gigabyte of lines).
BLOCK_BYTES = 32 << 20


class BadIndex(Exception):
    """An index file that must not be used; `kind` and `message` as a store_check.Problem has them."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind, self.message = kind, message


@dataclass(eq=False)
class IndexData:
    """A loaded index: its columns (read-only views of the mapped file) and what it covers."""

    path: str
    rows: int
    covered_bytes: int
    covered_lines: int
    columns: dict[str, np.ndarray]
    class_offsets: np.ndarray
    class_values: np.ndarray
    quality_keys: list[str]
    quality: np.ndarray  # (len(quality_keys), rows)
    fingerprints: list[dict[str, Any]]
    problems: list[LineProblem]
    bad_lines: int
    sorted: bool
    tail_crc: int = 0
    identity: tuple[int, ...] = ()
    load_args: tuple[Any, ...] = field(default=(), repr=False)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled (to a spawned worker) as where to map it again, not as its arrays: the file identity and a
        digest of its rows' line offsets and checksums, so the copy maps the same rows or parses them anew."""
        return {"path": self.path, "rows": self.rows, "identity": self.identity, "digest": self._digest(),
                "load_args": self.load_args, "covered_bytes": self.covered_bytes}  # fmt: skip

    def _digest(self, rows: int | None = None) -> int:
        n = self.rows if rows is None else rows
        return zlib.crc32(self.columns["crc"][:n].tobytes(), zlib.crc32(self.columns["offset"][:n].tobytes()))

    def __setstate__(self, state: dict[str, Any]) -> None:
        seg_dir, segment, exts, n_classes = state["load_args"]
        try:
            fresh = load_index(Path(seg_dir), segment, exts, n_classes)
        except BadIndex:
            fresh = None
        if fresh is None or fresh.rows < state["rows"] or fresh._digest(state["rows"]) != state["digest"]:
            fresh = _parse_prefix(Path(seg_dir), segment, exts, n_classes, state["covered_bytes"])
        self.__dict__.update(fresh.__dict__)
        if self.rows != state["rows"]:
            raise RuntimeError(f"segment {segment}: its manifest no longer holds the {state['rows']} records it did")


def index_path(seg_dir: Path) -> Path:
    return Path(seg_dir) / INDEX_FILE


def _tail_crc(fd: int, covered: int) -> int:
    start = max(0, covered - TAIL_BYTES)
    return zlib.crc32(os.pread(fd, covered - start, start))


def load_index(seg_dir: Path, segment: str, exts: tuple[str, ...], n_classes: int) -> IndexData | None:
    """The segment's index, checked (see the module docstring); None when there is none (or the manifest is not
    a plain file: the reader reports that). Raises BadIndex when there is one that must not be used."""
    path = index_path(seg_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except PermissionError:
        raise BadIndex("permission denied", "the index cannot be read by this user: not used") from None
    except OSError as err:
        raise BadIndex("bad index", f"is a symbolic link or cannot be opened ({err.strerror}): never read") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadIndex("bad index", "is not a plain file: never read")
        if st.st_size < len(MAGIC) + 8:
            raise BadIndex("bad index", f"is {st.st_size} bytes, too short to be an index (torn?): not used")
        mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    data = _parse(mm, segment, exts, n_classes)  # the mapping closes once no array of it is left
    data.path = os.fspath(path)
    data.identity = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    data.load_args = (os.fspath(seg_dir), segment, exts, n_classes)
    manifest = Path(seg_dir) / "manifest.jsonl"
    try:
        mfd = os.open(manifest, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None  # no readable plain manifest: no records either way, and the reader says why
    try:
        size = os.fstat(mfd).st_size
        if size < data.covered_bytes:
            raise BadIndex(
                "bad index",
                f"covers {data.covered_bytes} bytes of the manifest, which has {size}: it belongs to another "
                "manifest; not used",
            )
        if _tail_crc(mfd, data.covered_bytes) != data.tail_crc:
            raise BadIndex("bad index", "is stale: the manifest changed in the part it covers; not used")
    finally:
        os.close(mfd)
    return data


def _parse(mm: mmap.mmap, segment: str, exts: tuple[str, ...], n_classes: int) -> IndexData:
    """Header and arrays of a mapped index file, every part checked; BadIndex otherwise."""
    if mm[: len(MAGIC)] != MAGIC:
        raise BadIndex("bad index", "does not start as a synthaug index (garbage, or another kind of file): not used")
    start = len(MAGIC) + 8
    n_header = int.from_bytes(mm[len(MAGIC) : start], "little")
    if n_header > len(mm) - start:
        raise BadIndex("bad index", "is shorter than its header says (torn?): not used")
    try:
        header = json.loads(mm[start : start + n_header])
        version = header["version"]
    except (ValueError, KeyError, TypeError):
        raise BadIndex("bad index", "has an unreadable header (torn or garbage): not used") from None
    if version != INDEX_VERSION:
        raise BadIndex(
            "bad index",
            f"has index format version {version!r}; this synthaug ({__version__}) reads version {INDEX_VERSION}: "
            "not used; `synthaug index --rebuild STORE` rewrites it",
        )
    try:
        return _arrays(mm, header, segment, exts, n_classes)
    except BadIndex:
        raise
    except (KeyError, TypeError, ValueError, IndexError, OverflowError) as err:
        raise BadIndex("bad index", f"has a malformed header ({type(err).__name__}: {err}): not used") from None


def _arrays(mm: mmap.mmap, header: dict[str, Any], segment: str, exts: tuple[str, ...], n_classes: int) -> IndexData:
    if header["segment"] != segment:
        raise BadIndex("bad index", f"is the index of segment {header['segment']!r:.80}, not of {segment!r}: not used")
    if tuple(header["exts"]) != exts:
        raise BadIndex("bad index", f"was written for image formats {header['exts']!r:.80}, not {list(exts)}: not used")
    data_start, data_bytes = int(header["data_start"]), int(header["data_bytes"])
    if data_start + data_bytes != len(mm):
        raise BadIndex("bad index", f"is {len(mm)} bytes, its header says {data_start + data_bytes} (torn?): not used")
    if zlib.crc32(memoryview(mm)[data_start:]) != header["data_crc"]:
        raise BadIndex("bad index", "is damaged: its data do not match their CRC-32; not used")
    rows = int(header["rows"])
    quality_keys = [str(k) for k in header["quality_keys"]]
    want = {name: (dtype, [rows]) for name, dtype in COLUMNS.items()}
    want["class_offsets"] = (CLASS_OFFSETS, [rows + 1])
    want["class_values"] = (CLASS_VALUES, None)
    want["quality"] = ("<f8", [len(quality_keys), rows])
    arrays = {}
    for name, (dtype, shape) in want.items():
        spec = header["arrays"][name]
        dims = [int(d) for d in spec["shape"]]
        if spec["dtype"] != dtype or (shape is not None and dims != shape) or not dims or min(dims) < 0:
            raise BadIndex("bad index", f"array {name} is {spec['dtype']} {spec['shape']}, not {dtype} {shape}")
        count = int(np.prod(dims))
        offset = int(spec["offset"])
        if offset < 0 or offset + count * np.dtype(dtype).itemsize > data_bytes:
            raise BadIndex("bad index", f"array {name} lies outside the file: not used")
        arrays[name] = np.frombuffer(mm, dtype=dtype, count=count, offset=data_start + offset).reshape(dims)
    problems = [(int(line), str(kind), str(msg)) for line, kind, msg in header["problems"][:MAX_PROBLEMS]]
    data = IndexData(
        path="",
        rows=rows,
        covered_bytes=int(header["covered_bytes"]),
        covered_lines=int(header["covered_lines"]),
        columns={name: arrays[name] for name in COLUMNS},
        class_offsets=arrays["class_offsets"],
        class_values=arrays["class_values"],
        quality_keys=quality_keys,
        quality=arrays["quality"],
        fingerprints=list(header["fingerprints"]),
        problems=problems,
        bad_lines=int(header["bad_lines"]),
        sorted=False,
        tail_crc=int(header["tail_crc"]),
    )
    why = _inconsistency(data, n_classes, len(exts))
    if why:
        raise BadIndex("bad index", f"is inconsistent: {why}; not used")
    return data


def _inconsistency(d: IndexData, n_classes: int, n_exts: int) -> str | None:
    """Why an index's arrays cannot describe a manifest's valid records (None when they can)."""
    c, n = d.columns, d.rows
    if d.covered_bytes < 0 or d.covered_lines < 0 or d.bad_lines < len(d.problems) or n > d.covered_lines:
        return "its coverage and counts do not add up"
    if not all(isinstance(fp, dict) for fp in d.fingerprints):
        return "a fingerprint is not a mapping"
    if not n:
        d.sorted = True  # no row is out of order (rows parsed later are checked as they come)
        return None if d.class_offsets[0] == 0 and not len(d.class_values) else "rows and classes disagree"
    ends = c["offset"] + c["length"]
    if c["offset"][0] < 0 or (np.diff(c["offset"]) < c["length"][:-1]).any() or ends[-1] > d.covered_bytes:
        return "its line offsets overlap or lie beyond the part of the manifest it covers"
    if c["line"][0] < 1 or (np.diff(c["line"].astype(np.int64)) < 1).any() or c["line"][-1] > d.covered_lines:
        return "its line numbers are out of order"
    if c["position"].min() < 0 or c["digits"].min() < 1 or c["digits"].max() > 12:
        return "an id number is out of range"
    if c["height"].min() < 1 or c["width"].min() < 1 or (c["height"] * c["width"].astype(np.uint64)).max() > MAX_PIXELS:
        return "a size is out of range"
    if (
        c["ext"].max() >= n_exts
        or ((c["fingerprint"] >= len(d.fingerprints)) & (c["fingerprint"] != NO_FINGERPRINT)).any()
    ):
        return "an image format or fingerprint code is out of range"
    off = d.class_offsets
    if off[0] != 0 or off[-1] != len(d.class_values) or (np.diff(off) < 0).any():
        return "its class offsets are out of order"
    if len(d.class_values) and d.class_values.max() >= n_classes:
        return f"a class id is not one of the store's {n_classes} classes"
    if np.isinf(d.quality).any() or not np.isfinite(c["created"]).all():
        return "a quality figure or time is not finite"
    d.sorted = bool((np.diff(c["position"]) >= 0).all())
    return None


def disagreement(base: IndexData, parsed: SegmentRows | None) -> str | None:
    """How index `base` differs from what parsing its manifest gave (`parsed`, read without the index); None when
    it holds exactly the records and bad lines of the part it covers."""
    n = base.rows
    if parsed is None or len(parsed) < n or parsed.covered_bytes < base.covered_bytes:
        return f"it lists {n} records, more than the manifest holds: readers would serve records that are gone"
    for name in COLUMNS:
        if not np.array_equal(base.columns[name], parsed.col(name)[:n]):
            return f"its {name} column differs from the manifest's records"
    offsets, values = parsed.classes_csr()
    if not (
        np.array_equal(base.class_offsets, offsets[: n + 1]) and np.array_equal(base.class_values, values[: offsets[n]])
    ):
        return "its classes differ from the manifest's records"
    for k, key in enumerate(base.quality_keys):
        if not np.array_equal(base.quality[k], parsed.quality(key)[:n], equal_nan=True):
            return f"its quality figure {key!r} differs from the manifest's records"
    if len(parsed.problems) < MAX_PROBLEMS:
        lines = [p[:2] for p in parsed.problems if p[0] <= base.covered_lines]
        if lines != [p[:2] for p in base.problems] or len(lines) != base.bad_lines:
            return "its bad lines are not the manifest's (lines were blanked or rewritten since it was written)"
    return None


def write_index(seg_dir: Path, rows: SegmentRows, fsync: bool = True) -> Path:
    """Write `rows` (every record of the segment's manifest up to rows.covered_bytes) as the segment's index,
    atomically. The caller holds the segment's writer lock (the manifest must not change meanwhile)."""
    rows.flush()
    n = len(rows)
    manifest = Path(seg_dir) / "manifest.jsonl"
    fd = os.open(manifest, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        tail_crc = _tail_crc(fd, rows.covered_bytes)
    finally:
        os.close(fd)
    keys = rows.quality_keys
    arrays: dict[str, np.ndarray] = {
        name: np.ascontiguousarray(rows.col(name), dtype=dt) for name, dt in COLUMNS.items()
    }
    offsets, values = rows.classes_csr()
    arrays["class_offsets"] = np.ascontiguousarray(offsets, dtype=CLASS_OFFSETS)
    arrays["class_values"] = np.ascontiguousarray(values, dtype=CLASS_VALUES)
    arrays["quality"] = (np.stack([rows.quality(k) for k in keys]) if keys else np.zeros((0, n))).astype("<f8")
    specs, blobs, pos = {}, [], 0
    for name, arr in arrays.items():
        pad = -pos % _ALIGN
        blobs.append(b"\0" * pad)
        pos += pad
        specs[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "offset": pos}
        blobs.append(arr.tobytes())
        pos += arr.nbytes
    body = b"".join(blobs)
    header = {
        "version": INDEX_VERSION,
        "segment": rows.name,
        "rows": n,
        "covered_bytes": rows.covered_bytes,
        "covered_lines": rows.covered_lines,
        "tail_crc": tail_crc,
        "exts": list(rows.exts),
        "quality_keys": keys,
        "fingerprints": rows.fingerprints,
        "problems": [list(p) for p in rows.problems[:MAX_PROBLEMS]],
        "bad_lines": rows.bad_lines,
        "arrays": specs,
        "data_bytes": len(body),
        "data_crc": zlib.crc32(body),
        "synthaug_version": __version__,
    }
    # Room for the header and its own ',"data_start":N', rounded up to the alignment; spaces pad the rest.
    data_start = len(MAGIC) + 8 + len(json.dumps(header, separators=(",", ":"))) + 40
    header["data_start"] = data_start = data_start + -data_start % _ALIGN
    raw = json.dumps(header, separators=(",", ":")).encode()
    head = MAGIC + len(raw).to_bytes(8, "little") + raw
    head += b" " * (data_start - len(head))
    path = index_path(seg_dir)
    atomic_write_bytes(path, head + body, fsync=fsync)
    return path


def ingest_manifest(rows: SegmentRows, manifest: Path, report: Any = None) -> int:
    """Add the complete lines of `manifest` after rows.covered_bytes to `rows`, block by block; rows added."""
    added = 0
    while chunk := read_complete_lines(manifest, rows.covered_bytes, BLOCK_BYTES):
        added += rows.ingest(chunk, report)
    return added


def _parse_prefix(seg_dir: Path, segment: str, exts: tuple[str, ...], n_classes: int, upto: int) -> IndexData:
    """The records of the manifest's first `upto` bytes, parsed, in an IndexData (when a pickled index cannot be
    mapped again as it was)."""
    rows = SegmentRows(segment, exts, n_classes, seg_dir / "manifest.jsonl")
    while rows.covered_bytes < upto:
        want = upto - rows.covered_bytes
        chunk = read_complete_lines(seg_dir / "manifest.jsonl", rows.covered_bytes, min(BLOCK_BYTES, want))
        chunk = chunk[: chunk.rfind(b"\n", 0, want) + 1]
        if not chunk:
            break
        rows.ingest(chunk)
    offsets, values = rows.classes_csr()
    keys = rows.quality_keys
    return IndexData(
        path="",
        rows=len(rows),
        covered_bytes=rows.covered_bytes,
        covered_lines=rows.covered_lines,
        columns={name: rows.col(name) for name in COLUMNS},
        class_offsets=offsets,
        class_values=values,
        quality_keys=keys,
        quality=np.stack([rows.quality(k) for k in keys]) if keys else np.zeros((0, len(rows))),
        fingerprints=rows.fingerprints,
        problems=rows.problems,
        bad_lines=rows.bad_lines,
        sorted=rows.sorted,
        load_args=(os.fspath(seg_dir), segment, exts, n_classes),
    )


def index_segment(
    seg_dir: Path, segment: str, exts: tuple[str, ...], n_classes: int, rebuild: bool = False, fsync: bool = True
) -> str:
    """Write the index of a sealed segment if it has none, or a stale or bad one ('written'), or say it is
    'fresh', 'empty' (no manifest) or 'busy' (a live writer holds it: it writes its own index when it closes). `rebuild`: parse the
    whole manifest even if the index is fresh. Raises OSError (PermissionError on a read-only store)."""
    lock = FileLock(Path(seg_dir) / WRITER_LOCK, role="synthaug index")
    if not lock.try_acquire():
        return "busy"
    try:
        if not os.path.lexists(Path(seg_dir) / "manifest.jsonl"):
            return "empty"
        rows = SegmentRows(segment, exts, n_classes, Path(seg_dir) / "manifest.jsonl")
        if not rebuild:
            try:
                base = load_index(seg_dir, segment, exts, n_classes)
            except BadIndex:
                base = None
            if base is not None:
                rows.set_base(base)
        before = rows.covered_bytes if rows.base is not None else -1
        ingest_manifest(rows, Path(seg_dir) / "manifest.jsonl")
        if rows.covered_bytes == before:
            return "fresh"
        write_index(seg_dir, rows, fsync=fsync)
        return "written"
    finally:
        lock.release()

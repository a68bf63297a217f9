"""The records a reader holds, as columns: one SegmentRows per segment, Record views, RecordList views.

A reader of a million records cannot hold a million dicts (4.4 GB, and a copy in every DataLoader
worker). It holds, per segment, one NumPy column per field that the pool, the mix and `stats` use:

    position, digits   the id's number and how many digits it is written with ('<segment>-<digits>')
    offset, length     where the record's line is in the manifest, and its length with the newline
    crc                zlib.crc32 of that line: a line read back later must be the line that was checked
    line               its 1-based line number (for reports that name file and line)
    height, width, created, ext (index into the store's image formats), instances (how many)
    fingerprint        index into a per-segment table of distinct fingerprints
    classes            CSR: class_offsets (rows + 1) into class_values
    quality            one float64 column per quality figure; NaN where a record lacks that figure

The first rows of a segment may come from its index file (synthaug.store_index), mapped read-only
and shared by every process on the machine; rows parsed from the manifest since are kept in growing
columns of this process. A `Record` is a light, read-only Mapping over one row: id, image, mask,
height, width, classes, created, quality and fingerprint come from the columns; any other key
(prompt, seed, instances) reads the record's manifest line back, checks that it is byte for byte
the line that was validated (length, crc32, id and paths), and parses it. A `RecordList` is a
list-like view of rows of several segments (runs of row ranges or row arrays), with column
accessors that the pool's policies and `stats` use without making one object per record.
"""

from __future__ import annotations

import bisect
import copy
import json
import math
import os
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from synthaug.store_check import MAX_PROBLEMS, check_record, parse_line, sample_rel, split_lines

#: Per-row columns and their dtypes (as the index file stores them, little-endian).
COLUMNS: dict[str, str] = {
    "position": "<i8",
    "digits": "|u1",
    "offset": "<i8",
    "length": "<u4",
    "crc": "<u4",
    "line": "<u4",
    "height": "<u4",
    "width": "<u4",
    "created": "<f8",
    "ext": "|u1",
    "instances": "<u4",
    "fingerprint": "<u4",
}
CLASS_OFFSETS, CLASS_VALUES = "<i8", "|u1"
#: Distinct fingerprints kept per segment; rows beyond get NO_FINGERPRINT and read theirs from the manifest.
MAX_FINGERPRINTS = 1024
NO_FINGERPRINT = 0xFFFFFFFF
#: A reported problem of a segment: (line, kind, message).
LineProblem = tuple[int, str, str]
Report = Callable[[int, str, str], None]


class RecordLineError(ValueError):
    """A record's manifest line no longer reads back as the line that was checked (the manifest was rewritten
    in place, or its index describes another manifest)."""


def id_key(position: int, digits: int) -> int:
    """One integer per id of a segment: its number and its digit count ('s-7' and 's-07' are different ids)."""
    return position * 16 + digits


def parse_id(sample_id: str) -> tuple[str, int] | None:
    """(segment, id key) of a record id '<segment>-<digits>', or None when it is not of that form."""
    seg, _, number = sample_id.rpartition("-")
    if not seg or not number.isdigit() or not number.isascii() or len(number) > 12:
        return None
    return seg, id_key(int(number), len(number))


#: What json.loads runs on a string once its checks are done (the same decoder settings as json.loads).
_SCAN = json.JSONDecoder().scan_once


def _parse(line: bytes) -> Any:
    """store_check.parse_line, decoding UTF-8 first (a leading BOM dropped): what json.loads does with bytes,
    without its per-call encoding detection (a line in another encoding is left to json.loads). The usual line,
    one JSON value then its line end, is scanned directly; any other line, or one that does not scan, goes
    through parse_line, so what it gives and every error are exactly json.loads'."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return parse_line(line)
    if text[:1] == "\ufeff":
        text = text[1:]
    try:
        value, end = _SCAN(text, 0)
    except (StopIteration, ValueError, RecursionError):
        return parse_line(text)
    return value if not text[end:].strip(" \t\n\r") else parse_line(text)


class _Column:
    """A NumPy column that grows by doubling (appending a batch costs the batch, not the column)."""

    def __init__(self, dtype: str, rows: int = 0, fill: float = 0) -> None:
        self.buf = np.full(max(rows, 16), fill, dtype=dtype)
        self.n = rows

    def extend(self, new: np.ndarray) -> None:
        if self.n + len(new) > len(self.buf):
            grown = np.empty(max(2 * len(self.buf), self.n + len(new)), dtype=self.buf.dtype)
            grown[: self.n] = self.buf[: self.n]
            self.buf = grown
        self.buf[self.n : self.n + len(new)] = new
        self.n += len(new)

    def array(self) -> np.ndarray:
        return self.buf[: self.n]


class SegmentRows:
    """The records of one segment that this process holds, as columns (see the module docstring).

    `base` holds the rows read from the segment's index (mapped), the growing columns those parsed since.
    `covered_bytes` / `covered_lines` say how far into the manifest the rows reach; `problems` and
    `bad_lines` are what the lines up to there that are not records were (an index keeps them, so a reader
    that uses it reports them by line as one that parses the manifest does).
    """

    def __init__(self, name: str, exts: tuple[str, ...], n_classes: int, manifest: str | os.PathLike) -> None:
        self.name = name
        self.exts = exts
        self.n_classes = n_classes
        self.manifest = os.fspath(manifest)
        self.base: Any = None  # a store_index.IndexData
        self.n_base = 0
        self.covered_bytes = 0
        self.covered_lines = 0
        self.problems: list[LineProblem] = []
        self.bad_lines = 0
        self.sorted = True  # positions never decrease (so a snapshot's rows of it are a prefix)
        self.fingerprints: list[dict[str, Any]] = []
        self._fp_codes: dict[str, int] = {}
        self._last_fp: tuple[Any, int] = (None, 0)
        self._tail = {name: _Column(dtype) for name, dtype in COLUMNS.items()}
        self._tail_offsets = _Column(CLASS_OFFSETS, rows=1)
        self._tail_values = _Column(CLASS_VALUES)
        self._tail_quality: dict[str, _Column] = {}
        self._pending: list[tuple[Any, ...]] = []  # rows added since the last flush, one tuple each
        self._pending_classes: list[int] = []
        self._pending_ends: list[int] = []
        self._pending_quality: list[dict[str, float]] = []
        self._cols: dict[str, np.ndarray] = {}
        self._cache: dict[Any, tuple[int, Any]] = {}
        self._ranges: dict[Any, Any] = {}

    # ------------------------------------------------------------------ filling

    def set_base(self, base: Any) -> None:
        """Start from index `base` (before any row is added): its rows, coverage, problems and fingerprints."""
        assert len(self) == 0, "an index is the first rows of a segment"
        self.base, self.n_base = base, base.rows
        self.covered_bytes, self.covered_lines = base.covered_bytes, base.covered_lines
        self.problems, self.bad_lines = list(base.problems), base.bad_lines
        self.sorted = base.sorted
        self.fingerprints = list(base.fingerprints)
        self._fp_codes = {json.dumps(fp, sort_keys=True): k for k, fp in enumerate(self.fingerprints)}
        self._cols.clear()
        self._cache.clear()

    def ingest(self, chunk: bytes, report: Report | None = None) -> int:
        """Adopt the complete lines `chunk` that continue the manifest where the rows end; each line that is not
        a valid record is reported (line, kind, message) and kept in `problems`. Returns how many rows were added."""
        start_rows = len(self)
        for number, start, line in split_lines(chunk, self.covered_lines + 1):
            rec = _parse(line)
            bad = ("bad line", str(rec)) if isinstance(rec, Exception) else None
            bad = bad or check_record(rec, self.name, self.n_classes, self.exts)
            if bad:
                self.bad_lines += 1
                if len(self.problems) < MAX_PROBLEMS:
                    self.problems.append((number, *bad))
                if report is not None:
                    report(number, *bad)
                continue
            self.add(rec, self.covered_bytes + start, len(line), zlib.crc32(line), number)
        self.covered_bytes += len(chunk)
        self.covered_lines += chunk.count(b"\n")
        self.flush()
        return len(self) - start_rows

    def add(self, rec: dict[str, Any], offset: int, length: int, crc: int, line: int) -> None:
        """Add one checked record (see store_check.check_record) whose line is at `offset` of the manifest; it
        joins the columns at the next flush()."""
        number = rec["id"].rsplit("-", 1)[1]
        ext = self.exts.index(rec["image"].rsplit(".", 1)[1])
        fp = self._fingerprint_code(rec.get("fingerprint", {}))
        created = float(rec.get("created", 0.0))
        row = (int(number), len(number), offset, length, crc, line, rec["height"], rec["width"], created, ext)
        self._pending.append((*row, len(rec.get("instances", ())), fp))
        self._pending_classes += rec.get("classes", ())
        self._pending_ends.append(len(self._pending_classes))
        self._pending_quality.append(rec.get("quality", {}))

    def flush(self) -> None:
        """Move the rows added since the last flush into the column arrays (column reads flush first)."""
        if not self._pending:
            return
        n_before = len(self) - len(self._pending)
        last = self._last_position()
        for (name, dtype), values in zip(COLUMNS.items(), zip(*self._pending)):
            self._tail[name].extend(np.array(values, dtype=dtype))
        positions = self._tail["position"].array()[n_before - self.n_base :]
        if (last is not None and positions[0] < last) or (np.diff(positions) < 0).any():
            self.sorted = False
        total = self._tail_offsets.array()[-1]
        self._tail_offsets.extend(total + np.array(self._pending_ends, dtype=CLASS_OFFSETS))
        self._tail_values.extend(np.array(self._pending_classes, dtype=CLASS_VALUES))
        n_tail = n_before - self.n_base
        quality = self._pending_quality
        for key in sorted({k for q in quality for k in q} - self._tail_quality.keys()):
            self._tail_quality[key] = _Column("<f8", rows=n_tail, fill=math.nan)
        for key, col in self._tail_quality.items():
            col.extend(np.array([q.get(key, math.nan) for q in quality], dtype="<f8"))
        self._pending, self._pending_classes, self._pending_ends, self._pending_quality = [], [], [], []
        self._cols.clear()
        self._cache.clear()

    def _last_position(self) -> int | None:
        tail = self._tail["position"].array()
        if len(tail):
            return int(tail[-1])
        return int(self.base.columns["position"][-1]) if self.n_base else None

    def _fingerprint_code(self, fp: Any) -> int:
        if fp == self._last_fp[0]:  # records of a segment mostly share one fingerprint
            return self._last_fp[1]
        key = json.dumps(fp, sort_keys=True)
        code = self._fp_codes.get(key)
        if code is None:
            if len(self.fingerprints) >= MAX_FINGERPRINTS:
                return NO_FINGERPRINT
            code = self._fp_codes[key] = len(self.fingerprints)
            self.fingerprints.append(copy.deepcopy(fp))
        self._last_fp = (fp, code)
        return code

    # ------------------------------------------------------------------ columns

    def __len__(self) -> int:
        return self.n_base + self._tail["position"].n + len(self._pending)

    def cached_range(self, key: Any, make: Callable[[], Any]) -> Any:
        """A value computed from a fixed range of rows (which never changes once the rows exist), kept."""
        hit = self._ranges.get(key)
        if hit is None:
            if len(self._ranges) > 64:
                self._ranges.clear()
            hit = self._ranges[key] = make()
        return hit

    def _cached(self, key: Any, make: Callable[[], Any]) -> Any:
        n = len(self)
        hit = self._cache.get(key)
        if hit is None or hit[0] != n:
            hit = self._cache[key] = (n, make())
        return hit[1]

    def col(self, name: str) -> np.ndarray:
        """Column `name` (see COLUMNS) over every row; the index's mapped array itself when no row came since."""
        got = self._cols.get(name)
        if got is not None and not self._pending:
            return got
        self.flush()
        tail = self._tail[name].array()
        if self.base is None:
            got = tail
        elif not len(tail):
            got = self.base.columns[name]
        else:
            got = np.concatenate([self.base.columns[name], tail])
        self._cols[name] = got
        return got

    @property
    def quality_keys(self) -> list[str]:
        """The quality figures any row has, in a fixed order."""
        self.flush()
        base = list(self.base.quality_keys) if self.base is not None else []
        return base + sorted(self._tail_quality.keys() - set(base))

    def quality(self, key: str) -> np.ndarray:
        """Quality figure `key` of every row (float64; NaN where a record lacks it)."""
        self.flush()

        def make() -> np.ndarray:
            parts = []
            if self.base is not None:
                keys = self.base.quality_keys
                parts.append(self.base.quality[keys.index(key)] if key in keys else np.full(self.n_base, math.nan))
            n_tail = len(self) - self.n_base
            col = self._tail_quality.get(key)
            parts.append(col.array() if col is not None else np.full(n_tail, math.nan))
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        if self.base is not None and len(self) == self.n_base and key in self.base.quality_keys:
            return self.base.quality[self.base.quality_keys.index(key)]
        return self._cached(("quality", key), make)

    def classes_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, values): the class ids of row r are values[offsets[r]:offsets[r + 1]]."""
        self.flush()
        t_off, t_val = self._tail_offsets.array(), self._tail_values.array()
        if self.base is None:
            return t_off, t_val
        b_off, b_val = self.base.class_offsets, self.base.class_values
        if len(t_off) == 1:
            return b_off, b_val
        return self._cached(
            "classes", lambda: (np.concatenate([b_off, t_off[1:] + b_off[-1]]), np.concatenate([b_val, t_val]))
        )

    def keys(self, rows: slice | np.ndarray) -> np.ndarray:
        """id_key of the given rows."""
        return self.col("position")[rows] * 16 + self.col("digits")[rows]

    def find(self, key: int) -> np.ndarray:
        """The rows whose id has `key` (normally one)."""
        position = key // 16
        pos = self.col("position")
        if self.sorted:
            lo, hi = np.searchsorted(pos, position, "left"), np.searchsorted(pos, position, "right")
            rows = np.arange(lo, hi)
        else:
            rows = np.flatnonzero(pos == position)
        return rows[self.col("digits")[rows] == key % 16]

    # ------------------------------------------------------------------ one row

    def record(self, row: int) -> Record:
        return Record(self, row)

    def record_id(self, row: int) -> str:
        return f"{self.name}-{self.col('position').item(row):0{self.col('digits').item(row)}d}"

    def image_rel(self, row: int) -> str:
        return sample_rel(self.name, f"{self.record_id(row)}.{self.exts[self.col('ext').item(row)]}")

    def classes(self, row: int) -> list[int]:
        offsets, values = self.classes_csr()
        return values[offsets[row] : offsets[row + 1]].tolist()

    def quality_of(self, row: int) -> dict[str, float]:
        out = {}
        for key in self.quality_keys:
            v = float(self.quality(key)[row])
            if not math.isnan(v):
                out[key] = v
        return out

    def read_line(self, row: int, fd: int | None = None) -> dict[str, Any]:
        """The full record of `row`, read back from its manifest line (through `fd` when given, else the manifest
        opened without following links) and checked to be the line that was validated: same length, crc32, id
        and file paths. Raises RecordLineError otherwise.

        The line was checked with store_check.check_record when it was parsed (by this reader, or by whoever
        wrote the index); being byte for byte that line, it is not checked again. Its files are still opened
        only inside its segment's samples/ folder and never through a link (SampleStore.read_record)."""
        col = self.col
        offset, length, crc = col("offset").item(row), col("length").item(row), col("crc").item(row)
        own = fd is None
        if own:
            fd = os.open(self.manifest, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            data = os.pread(fd, length, offset)
        finally:
            if own:
                os.close(fd)
        if len(data) != length or zlib.crc32(data) != crc:
            raise RecordLineError(
                f"its manifest line (bytes {offset}..{offset + length} of {self.manifest}) changed since it was "
                "checked: the manifest was rewritten in place, or the segment's index is stale; rebuild it with "
                "`synthaug index --rebuild`"
            )
        rec = _parse(data)
        sid = self.record_id(row)
        own_files = sample_rel(self.name, sid)
        if (
            not isinstance(rec, dict)
            or rec.get("id") != sid
            or rec.get("image") != f"{own_files}.{self.exts[col('ext').item(row)]}"
            or rec.get("mask") != f"{own_files}.mask.png"
        ):
            raise RecordLineError(f"its manifest line at byte {offset} is not the record {sid} (or its files)")
        return rec

    # ------------------------------------------------------------------ pickling (spawned workers)

    def __getstate__(self) -> dict[str, Any]:
        self.flush()
        return {**self.__dict__, "_cols": {}, "_cache": {}, "_ranges": {}}


def _fingerprint(rows: SegmentRows, row: int) -> dict[str, Any]:
    code = int(rows.col("fingerprint")[row])
    if code == NO_FINGERPRINT:
        return rows.read_line(row).get("fingerprint", {})
    return copy.deepcopy(rows.fingerprints[code])


#: Keys a Record answers from the columns, without reading its manifest line.
_CHEAP: dict[str, Callable[[SegmentRows, int], Any]] = {
    "id": SegmentRows.record_id,
    "image": SegmentRows.image_rel,
    "mask": lambda rows, row: sample_rel(rows.name, f"{rows.record_id(row)}.mask.png"),
    "height": lambda rows, row: int(rows.col("height")[row]),
    "width": lambda rows, row: int(rows.col("width")[row]),
    "created": lambda rows, row: float(rows.col("created")[row]),
    "classes": SegmentRows.classes,
    "quality": SegmentRows.quality_of,
    "fingerprint": _fingerprint,
}


class Record(Mapping[str, Any]):
    """One stored record, read-only: rec['id'], rec['classes'], rec.get('instances', []) ... as the manifest's dict
    has them. The keys of _CHEAP come from the columns (a record without 'classes', 'quality', 'created' or
    'fingerprint' gives [], {}, 0.0, {}); any other key reads the manifest line once (see SegmentRows.read_line).
    `full()` is the manifest's dict itself; a Record pickles as that dict."""

    __slots__ = ("_full", "row", "rows")

    def __init__(self, rows: SegmentRows, row: int) -> None:
        self.rows, self.row, self._full = rows, int(row), None

    def __getitem__(self, key: str) -> Any:
        cheap = _CHEAP.get(key)
        if cheap is not None:
            return cheap(self.rows, self.row)
        return self.full()[key]

    def full(self, fd: int | None = None) -> dict[str, Any]:
        """The record's manifest line, parsed (read once; RecordLineError if it changed since it was checked)."""
        if self._full is None:
            self._full = self.rows.read_line(self.row, fd)
        return self._full

    def __contains__(self, key: object) -> bool:
        return key in _CHEAP or key in self.full()

    def __iter__(self) -> Iterator[str]:
        return iter(self.full())

    def __len__(self) -> int:
        return len(self.full())

    def __repr__(self) -> str:
        return f"Record({self['id']!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return dict, (self.full(),)


def _bincount(seg: SegmentRows, rows: slice | np.ndarray) -> np.ndarray:
    return np.bincount(RecordList._run_classes(seg, rows)[1], minlength=256)


def _run_len(rows: slice | np.ndarray) -> int:
    return rows.stop - rows.start if isinstance(rows, slice) else len(rows)


def _run_part(rows: slice | np.ndarray, start: int, stop: int) -> slice | np.ndarray:
    """Entries [start, stop) of a run's rows, as a slice or an array like the run."""
    return slice(rows.start + start, rows.start + stop) if isinstance(rows, slice) else rows[start:stop]


def _starts_with(rows: slice | np.ndarray, head: slice | np.ndarray) -> bool:
    """Whether a run's rows begin with the rows `head`."""
    n = _run_len(head)
    if n > _run_len(rows):
        return False
    if isinstance(rows, slice) and isinstance(head, slice):
        return n == 0 or head.start == rows.start
    part = _run_part(rows, 0, n)
    as_array = [np.arange(r.start, r.stop) if isinstance(r, slice) else r for r in (part, head)]
    return bool(np.array_equal(*as_array))


class RecordList(Sequence[Record]):
    """Records of several segments in a given order, as runs (segment rows, a slice or an array of row numbers).
    Indexing gives Record views; `column`, `quality` and `classes` give arrays over all of them at once."""

    def __init__(self, runs: Sequence[tuple[SegmentRows, slice | np.ndarray]] = ()) -> None:
        self.runs = [(r, rows) for r, rows in runs if _run_len(rows) > 0]
        self._starts = [0]
        for _, rows in self.runs:
            self._starts.append(self._starts[-1] + _run_len(rows))

    @classmethod
    def of(cls, records: Iterable[Record]) -> RecordList:
        """`records` as a RecordList: itself if it is one, else a list of Records (such as a filter of one) in
        its order."""
        if isinstance(records, RecordList):
            return records
        runs: list[tuple[SegmentRows, slice | np.ndarray]] = []
        seg, rows = None, []
        for rec in records:
            if not isinstance(rec, Record):
                raise TypeError(f"a RecordList holds Records of a SampleStore, not {type(rec).__name__}")
            if rec.rows is not seg:
                if seg is not None:
                    runs.append((seg, np.array(rows, dtype=np.int64)))
                seg, rows = rec.rows, []
            rows.append(rec.row)
        if seg is not None:
            runs.append((seg, np.array(rows, dtype=np.int64)))
        return cls(runs)

    def __len__(self) -> int:
        return self._starts[-1]

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record index {index} out of range (0..{len(self) - 1})")
        k = bisect.bisect_right(self._starts, index) - 1
        seg, rows = self.runs[k]
        at = index - self._starts[k]
        return Record(seg, rows.start + at if isinstance(rows, slice) else rows[at])

    def __iter__(self) -> Iterator[Record]:
        for seg, rows in self.runs:
            for row in range(rows.start, rows.stop) if isinstance(rows, slice) else rows.tolist():
                yield Record(seg, row)

    def __repr__(self) -> str:
        return f"RecordList({len(self)} records in {len({id(s) for s, _ in self.runs})} segments)"

    def _concat(self, parts: list[np.ndarray], dtype: Any) -> np.ndarray:
        return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

    def column(self, name: str) -> np.ndarray:
        """Column `name` (see COLUMNS) of these records, in order."""
        return self._concat([seg.col(name)[rows] for seg, rows in self.runs], COLUMNS[name])

    def quality(self, key: str, missing: float = math.nan) -> np.ndarray:
        """Quality figure `key` of these records (float64), `missing` where a record lacks it."""
        out = self._concat([seg.quality(key)[rows] for seg, rows in self.runs], "<f8")
        return out if math.isnan(missing) else np.where(np.isnan(out), missing, out)

    def quality_keys(self) -> list[str]:
        """Every quality figure these records' segments hold."""
        return sorted({k for seg, _ in self.runs for k in seg.quality_keys})

    @staticmethod
    def _run_classes(seg: SegmentRows, rows: slice | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(offsets from 0, values) of the class ids of one run's rows."""
        off, val = seg.classes_csr()
        if isinstance(rows, slice):
            lo = off[rows.start]
            return off[rows.start : rows.stop + 1] - lo, val[lo : off[rows.stop]]
        starts, lens = off[rows], off[rows + 1] - off[rows]
        ends = np.cumsum(lens)
        total = int(ends[-1]) if len(ends) else 0
        within = np.arange(total) - np.repeat(ends - lens, lens)
        return np.concatenate([[0], ends]), val[np.repeat(starts, lens) + within]

    def classes(self) -> tuple[np.ndarray, np.ndarray]:
        """(offsets, values): record k's class ids are values[offsets[k]:offsets[k + 1]]."""
        offsets, values, total = [np.zeros(1, dtype=np.int64)], [], 0
        for seg, rows in self.runs:
            off, val = self._run_classes(seg, rows)
            offsets.append(off[1:] + total)
            values.append(val)
            total += len(val)
        return np.concatenate(offsets), self._concat(values, CLASS_VALUES)

    def class_counts(self) -> np.ndarray:
        """How many of these records list each class id (256 counts; a class listed twice counts twice)."""
        counts = np.zeros(256, dtype=np.int64)
        for seg, rows in self.runs:
            if isinstance(rows, slice):  # a range of a segment's rows never changes: counted once
                counts += seg.cached_range(
                    ("class_counts", rows.start, rows.stop), lambda s=seg, r=rows: _bincount(s, r)
                )
            else:
                counts += _bincount(seg, rows)
        return counts

    def min_over_classes(self, table: np.ndarray, empty: int) -> np.ndarray:
        """For each record, the smallest table[c] over its class ids c (`empty` for a record without classes)."""
        parts = []
        for seg, rows in self.runs:
            off, val = self._run_classes(seg, rows)
            none = off[1:] == off[:-1]
            if none.any():  # reduceat needs a non-empty range per index: only those with classes
                out = np.full(len(off) - 1, empty, dtype=table.dtype)
                some = np.flatnonzero(~none)
                if len(some):
                    out[some] = np.minimum.reduceat(table[val], off[some])
            else:
                out = np.minimum.reduceat(table[val], off[:-1])
            parts.append(out)
        return self._concat(parts, table.dtype)

    def segment_counts(self) -> dict[str, int]:
        """How many of these records each segment has."""
        out: dict[str, int] = {}
        for seg, rows in self.runs:
            out[seg.name] = out.get(seg.name, 0) + _run_len(rows)
        return out

    def added_since(self, old: RecordList) -> tuple[np.ndarray, RecordList] | None:
        """If these are the records of `old`, in its order, with records added (each run of `old` begins the run of
        its segment here, in the same order; whole new runs anywhere): the positions here of the added records
        (ascending) and the added records. None otherwise (a record of `old` is gone or moved).

        What a pool adopting a grown snapshot uses to weigh only the new records."""
        at, positions, added = 0, [], []
        for k, (seg, rows) in enumerate(self.runs):
            kept = 0
            if at < len(old.runs) and old.runs[at][0] is seg:
                if not _starts_with(rows, old.runs[at][1]):
                    return None
                kept = _run_len(old.runs[at][1])
                at += 1
            if kept < _run_len(rows):
                added.append((seg, _run_part(rows, kept, _run_len(rows))))
                positions.append(np.arange(self._starts[k] + kept, self._starts[k + 1]))
        if at < len(old.runs):
            return None
        return (np.concatenate(positions) if positions else np.zeros(0, dtype=np.int64)), RecordList(added)

    def filter(self, keep: np.ndarray) -> RecordList:
        """The records whose entry of boolean `keep` (one per record, in order) is True."""
        runs = []
        for k, (seg, rows) in enumerate(self.runs):
            part = keep[self._starts[k] : self._starts[k + 1]]
            if part.all():
                runs.append((seg, rows))
            else:
                all_rows = np.arange(rows.start, rows.stop) if isinstance(rows, slice) else rows
                runs.append((seg, all_rows[part]))
        return RecordList(runs)

"""Whole-store operations: verify (and repair), index, stats, and export to mmseg folders and COCO JSON.

`verify` reads every sample back and checks it against its record (formats, sizes, class ids, RLEs,
classes), every log line, every status and lease file, the files no record names, and each segment
index against its manifest (verify parses the manifests themselves: it never takes an index on trust);
each problem is reported with its file and line. `verify --repair` (see synthaug.store_repair)
quarantines what it can fix and deletes nothing; it leaves alone the unreferenced files of a segment
whose writer is live, rewrites the index of each sealed segment whose index is bad or stale, missing,
or whose lines it blanked, and exits non-zero while problems remain. `index_store` (`synthaug index`)
writes the indexes of sealed segments (see synthaug.store_index).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from synthaug.store import (
    IMAGE_FORMATS,
    MANIFEST,
    QUARANTINE,
    READERS,
    SEGMENTS,
    CorruptSampleError,
    SampleAccessError,
    SampleStore,
    StoreError,
    UnsafeRecordError,
    append_log,
    lease_time_problem,
    list_segments,
    read_lease,
    store_vocabulary,
)
from synthaug.store_check import SEGMENT_NAME, Problem, UnsafePathError
from synthaug.store_export import export
from synthaug.store_index import INDEX_FILE, BadIndex, disagreement, index_segment, load_index
from synthaug.store_lock import REPAIR_LOCK, WRITER_LOCK, FileLock, LockHeld, holder_of, is_locked
from synthaug.store_repair import (
    blank_lines,
    manifest_names,
    move_to_quarantine,
    restore_if_named,
    scan_samples,
    take_repair_lock,
)

__all__ = ["IndexReport", "VerifyReport", "deep_check", "export", "format_stats", "index_store", "stats", "verify"]

STATUS_DIR = "producers"
#: Problem kinds that `--repair` fixes by blanking the line (its text is kept in quarantine/lines.jsonl).
BLANKABLE = ("bad line", "bad record", "unsafe record")
#: Problem kinds that nothing but a person can fix: they keep `verify --repair` exiting non-zero.
SHOWN_AT_MOST = 200


@dataclass
class VerifyReport:
    """What `verify` found, each problem with its file and line, and what `--repair` did about it."""

    checked: int = 0
    total: int = 0
    corrupt: dict[str, str] = field(default_factory=dict)
    unsafe: dict[str, str] = field(default_factory=dict)
    denied: dict[str, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    bad_lines: int = 0
    torn_tails: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    unindexed: list[str] = field(default_factory=list)
    reindex: list[str] = field(default_factory=list)
    repaired: bool = False
    actions: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Nothing wrong was found (leftovers of crashed writers do not count: readers never see them)."""
        return not (self.problems or self.corrupt or self.unsafe or self.denied or self.bad_lines)

    def summary(self) -> str:
        """The report as `synthaug verify` prints it: each problem as FILE:LINE: KIND: what, then what was done."""
        of = f" of {self.total} (a random sample)" if self.total > self.checked else ""
        lines = [f"checked {self.checked}{of} samples: " + ("clean" if self.clean else "PROBLEMS FOUND")]
        lines += [f"  {p}" for p in self.problems[:SHOWN_AT_MOST]]
        if len(self.problems) > SHOWN_AT_MOST:
            lines.append(f"  ... and {len(self.problems) - SHOWN_AT_MOST} more")
        if self.bad_lines:
            lines.append(f"  {self.bad_lines} log line(s) skipped as bad or unsafe")
        if self.torn_tails:
            lines.append(
                f"  {len(self.torn_tails)} manifest(s) end in a torn line from a crashed writer "
                "(invisible to readers; the writer drops it when it resumes)"
            )
        for seg in self.busy:
            lines.append(f"  segment {seg}: its files without a record are left alone while its writer is live")
        if self.unindexed and not self.repaired:
            lines.append(
                f"  {len(self.unindexed)} sealed segment(s) have no index (not a problem: opening them is slower); "
                "`synthaug index` writes them"
            )
        if self.orphans or self.temp_files:
            lines.append(
                f"  {len(self.orphans)} orphan file(s) and {len(self.temp_files)} temporary file(s) left by "
                "crashed writers (invisible to readers)"
                + ("; moved to quarantine/" if self.repaired else "; `verify --repair` moves them to quarantine/")
            )
        lines += [f"  repaired: {a}" for a in self.actions]
        lines += [f"  REMAINS: {r}" for r in self.remaining]
        if self.repaired and self.actions:
            lines.append("  quarantined files stay in quarantine/ until `synthaug verify --purge-quarantine`")
        elif not self.repaired and not self.clean:
            lines.append("  run `synthaug verify --repair` to quarantine what it can fix (it deletes nothing)")
        return "\n".join(lines)


def verify(
    path: str | Path, repair: bool = False, sample: int | None = None, jobs: int = 1, progress: bool = False
) -> VerifyReport:
    """Check every sample (or a seeded random `sample` of them), log line and leftover file, reading samples in
    `jobs` processes with an optional progress bar; with `repair`, quarantine what can be fixed."""
    store = SampleStore(path, index=False)  # the manifests themselves: indexes are checked against them
    report = VerifyReport()
    lock = take_repair_lock(store.root) if repair else None
    try:
        if repair:
            store.refresh()
        _check_records(store, report, _chosen(store.records, sample), jobs, progress)
        _check_side_files(store, report)
        for seg in store.segment_names():
            _check_segment(store, seg, report, repair)
            _check_index(store, seg, report)
        report.problems[:0] = store.stats.problems
        report.bad_lines = store.stats.bad_lines
        report.total = len(store.records)
        if repair:
            _repair(store, report)
    finally:
        if lock is not None:
            lock.release()
    return report


def _chosen(records: list[dict[str, Any]], sample: int | None) -> list[dict[str, Any]]:
    """All records, or `sample` of them drawn with a fixed seed (in store order), for a quick check."""
    if sample is None or sample >= len(records):
        return records
    if sample < 1:
        raise ValueError(f"sample={sample}: check at least 1 sample (or leave it out to check all)")
    picks = np.sort(np.random.default_rng(0).choice(len(records), size=sample, replace=False))
    return [records[i] for i in picks]


def _problem_at(store: SampleStore, rec: Mapping[str, Any], kind: str, reason: str) -> Problem:
    """A problem of a record, placed at its manifest line."""
    file, line = store.location(rec)
    return Problem(file, line, kind, f"sample {rec['id']}: {reason}")


def _check_records(
    store: SampleStore, report: VerifyReport, records: list[dict[str, Any]], jobs: int, progress: bool
) -> None:
    """Read the records' samples back in full; sort what fails into corrupt, unsafe and permission denied."""
    found = {"corrupt": report.corrupt, "unsafe sample": report.unsafe, "permission denied": report.denied}
    for i, kind, reason in _failures(store, records, jobs, progress):
        found[kind][records[i]["id"]] = reason
        report.problems.append(_problem_at(store, records[i], kind, reason))
    report.checked = len(records)
    seen = Counter(r["id"] for r in store.records)
    report.duplicate_ids = sorted(i for i, n in seen.items() if n > 1)
    for rec in store.records:
        if rec["id"] in report.duplicate_ids:
            report.problems.append(_problem_at(store, rec, "duplicate id", "another record has the same id"))


def _failure(store: SampleStore, rec: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, reason) if the record's sample fails deep_check, else None."""
    try:
        deep_check(store, rec)
    except UnsafeRecordError as err:
        return "unsafe sample", err.reason
    except CorruptSampleError as err:
        return "corrupt", err.reason
    except SampleAccessError as err:
        return "permission denied", err.reason
    return None


def _check_span(store: SampleStore, records: list[dict[str, Any]], span: tuple[int, int]) -> tuple[int, list]:
    """The failures among records [start, stop), as (index, kind, reason)."""
    reader = copy.copy(store)  # its own folder descriptors, which no other thread closes or shares
    out = []
    for i in range(*span):
        bad = _failure(reader, records[i])
        if bad:
            out.append((i, *bad))
    return span[1] - span[0], out


def _failures(
    store: SampleStore, records: list[dict[str, Any]], jobs: int, progress: bool
) -> list[tuple[int, str, str]]:
    """(index, kind, reason) of every failing record, read in `jobs` threads (1: in this one).

    Threads, not forked processes: a fork of a process that already runs threads (torch's, a logger's) can
    inherit a held lock and hang; decoding and file reads release the GIL, so threads still overlap them.
    """
    spans = [(i, min(i + 256, len(records))) for i in range(0, len(records), 256)]
    out: list[tuple[int, str, str]] = []
    check = functools.partial(_check_span, store, records)
    with tqdm(total=len(records), desc="verify", unit="sample", disable=not progress) as bar:
        if jobs > 1 and len(spans) > 1:
            with ThreadPoolExecutor(jobs) as pool:
                for n, bad in pool.map(check, spans):
                    out += bad
                    bar.update(n)
        else:
            for n, bad in map(check, spans):
                out += bad
                bar.update(n)
    return sorted(out)


def deep_check(store: SampleStore, rec: dict[str, Any]) -> None:
    """Raise CorruptSampleError unless the sample reads back and agrees with its record: the classes in its mask
    are the record's, and each instance's RLE decodes to a mask of the image's size."""
    sample = store.read_record(rec)
    present = sorted(int(c) for c in np.unique(sample.mask) if c != 255)
    if present != sorted(rec.get("classes", [])):
        raise CorruptSampleError(rec["id"], f"the record's classes {rec.get('classes')} are not the mask's {present}")
    for k, inst in enumerate(sample.instances):
        try:
            inst.mask()
        except (ValueError, TypeError, KeyError) as err:
            raise CorruptSampleError(rec["id"], f"instance {k}: RLE does not decode: {err}") from None


def _check_index(store: SampleStore, seg: str, report: VerifyReport) -> None:
    """The segment's index against its manifest as parsed: a bad or stale one is a problem (readers ignore it,
    only slower), to be rewritten; a sealed segment with records and no index is listed in `unindexed`."""
    seg_dir = store.root / SEGMENTS / seg
    rel = f"{SEGMENTS}/{seg}/{INDEX_FILE}"
    try:
        base = load_index(seg_dir, seg, tuple(IMAGE_FORMATS), len(store.vocabulary))
        why = None if base is None else disagreement(base, store.segment_rows(seg))
    except BadIndex as err:
        report.problems.append(Problem(rel, 0, err.kind, err.message))
        report.reindex.append(seg)
        return
    if why:
        report.problems.append(Problem(rel, 0, "stale index", f"{why}; not used by readers that notice"))
        report.reindex.append(seg)
    elif base is None and len(store.segment_rows(seg) or ()) and not is_locked(seg_dir / WRITER_LOCK):
        report.unindexed.append(seg)


def _check_side_files(store: SampleStore, report: VerifyReport) -> None:
    """Status files of producers and reader leases: each must be a plain file of the JSON its readers expect."""
    for folder, check in ((STATUS_DIR, _status_problem), (READERS, _lease_problem)):
        base = store.root / folder
        if not os.path.lexists(base):
            continue
        if os.path.islink(base) or not base.is_dir():
            report.problems.append(Problem(folder, 0, "unsafe folder", "is a symbolic link: never read"))
            continue
        for path in sorted(base.glob("*.json")):
            why = check(path)
            if why:
                report.problems.append(Problem(f"{folder}/{path.name}", 1, "bad status file", why))


def _status_problem(path: Path) -> str | None:
    """Why a producer status file is not what the supervisor reads (None when it is)."""
    if os.path.islink(path):
        return "is a symbolic link: never read"
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as err:
        return f"does not read as JSON ({err})"
    seg = data.get("segment") if isinstance(data, dict) else None
    if not (isinstance(seg, str) and SEGMENT_NAME.match(seg) and f"{seg}.json" == path.name):
        return f"its segment {seg!r:.80} is not the file's name {path.stem!r}"
    if not isinstance(data.get("pid"), int):
        return f"its pid {data.get('pid')!r:.40} is not an integer"
    return None


def _lease_problem(path: Path) -> str | None:
    """Why a reader lease is skipped by producers (None when it is honoured)."""
    lease = read_lease(path)
    if lease is None:
        return "not a plain file holding an integer retired_offset and a time: producers ignore it"
    return lease_time_problem(lease, time.time())


def _check_segment(store: SampleStore, seg: str, report: VerifyReport, repair: bool) -> None:
    """A segment's torn tail and leftovers. A repair holds the segment's lock while it reads the manifest,
    lists samples/ and moves leftovers, so no record can land in between; a live writer's segment is skipped."""
    seg_dir = store.root / SEGMENTS / seg
    lock = FileLock(seg_dir / WRITER_LOCK, role="verify --repair")
    try:
        if (repair and not lock.try_acquire()) or (not repair and is_locked(seg_dir / WRITER_LOCK)):
            report.busy.append(f"{seg} (writer: {holder_of(seg_dir / WRITER_LOCK)})")
            return
        _scan_segment(store.root, seg, report, repair)
    except PermissionError as err:
        why = f"permission denied ({err}): its leftovers were not checked; run as the store's owner"
        report.problems.append(Problem(f"{SEGMENTS}/{seg}", 0, "permission denied", why))
    finally:
        lock.release()


def _scan_segment(root: Path, seg: str, report: VerifyReport, repair: bool) -> None:
    """Torn tail, orphans, temporary files and links of one segment; with `repair` (segment lock held), move
    the orphans and temporary files into quarantine/."""
    manifest = root / SEGMENTS / seg / MANIFEST
    data = manifest.read_bytes() if manifest.is_file() and not manifest.is_symlink() else b""
    if data and not data.endswith(b"\n"):
        report.torn_tails.append(seg)
    orphans, temps, unsafe = scan_samples(root, seg, manifest_names(data))
    for rel in unsafe:
        report.problems.append(Problem(rel, 0, "unsafe file", "a symbolic link or not a file: never touched"))
    report.orphans += orphans
    report.temp_files += temps
    if repair:
        _move_leftovers(root, seg, orphans + temps, report)


def _move_leftovers(root: Path, seg: str, rels: list[str], report: VerifyReport) -> None:
    """Move a locked segment's orphans and temporary files into quarantine/, then move back any file that
    its manifest has come to name meanwhile."""
    moved: dict[str, str] = {}
    for rel in rels:
        try:
            moved[rel] = move_to_quarantine(root, rel, "no record names it (left by a crashed writer)")
        except (OSError, UnsafePathError) as err:
            report.remaining.append(f"{rel}: could not be moved to quarantine/ ({err})")
    if moved:
        manifest = root / SEGMENTS / seg / MANIFEST
        back = restore_if_named(root, seg, moved, manifest_names(manifest.read_bytes()) if manifest.exists() else set())
        report.actions.append(f"segment {seg}: moved {len(moved) - back} unreferenced file(s) to quarantine/")


def _repair(store: SampleStore, report: VerifyReport) -> None:
    """Quarantine corrupt samples (files moved) and unsafe ones (id only: their files are never touched),
    blank bad log lines, and list what only a person can fix."""
    by_id = {r["id"]: r for r in store.records}
    entries = []
    for sid, reason in {**report.corrupt, **report.unsafe}.items():
        files = [] if sid in report.unsafe else [by_id[sid]["image"], by_id[sid]["mask"]]
        for rel in files:
            try:
                move_to_quarantine(store.root, rel, f"sample {sid}: {reason}")
            except FileNotFoundError:
                pass
            except (OSError, UnsafePathError) as err:
                report.remaining.append(f"{rel} of sample {sid}: could not be moved to quarantine/ ({err})")
        entries.append(json.dumps({"id": sid, "reason": reason}) + "\n")
    if entries:
        append_log(store.root, QUARANTINE, "".join(entries).encode())
        report.actions.append(f"quarantined {len(entries)} sample(s) (listed in {QUARANTINE})")
    blanked = _blank_bad_lines(store.root, report)
    _reindex(store, report, {*report.reindex, *report.unindexed, *blanked})
    report.remaining += [str(p) for p in report.problems if p.kind in ("permission denied", "duplicate id")]
    report.remaining += [str(p) for p in report.problems if p.kind in ("unsafe folder", "unsafe file")]
    report.remaining += [str(p) for p in report.problems if p.kind == "bad status file"]
    report.repaired = True


def _reindex(store: SampleStore, report: VerifyReport, segments: set[str]) -> None:
    """Rewrite the index of each of `segments` that is sealed (a live writer writes its own when it closes)."""
    for seg in sorted(segments):
        try:
            state = index_segment(
                store.root / SEGMENTS / seg, seg, tuple(IMAGE_FORMATS), len(store.vocabulary), rebuild=True
            )
        except OSError as err:
            report.remaining.append(f"{SEGMENTS}/{seg}/{INDEX_FILE}: could not be written ({err})")
            continue
        if state == "written":
            report.actions.append(f"segment {seg}: index written from its manifest")


def _blank_bad_lines(root: Path, report: VerifyReport) -> set[str]:
    """Blank every bad, malformed or unsafe log line found (their text is saved in quarantine/lines.jsonl);
    returns the segments whose manifest had lines blanked."""
    by_file: dict[str, set[int]] = {}
    for p in report.problems:
        if p.kind in BLANKABLE and p.line:
            by_file.setdefault(p.file, set()).add(p.line)
    for rel, lines in sorted(by_file.items()):
        try:
            n = blank_lines(root, rel, lines)
            report.actions.append(f"{rel}: blanked {n} bad line(s) (text kept in quarantine/lines.jsonl)")
        except (OSError, UnsafePathError) as err:
            report.remaining.append(f"{rel}: could not blank lines {sorted(lines)} ({err})")
    return {rel.split("/")[1] for rel in by_file if rel.startswith(f"{SEGMENTS}/") and rel.endswith(f"/{MANIFEST}")}


@dataclass
class IndexReport:
    """What `index_store` did per segment: wrote its index, found it fresh, left it to its live writer (busy),
    found no manifest, or could not write it (with why)."""

    written: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"indexed {len(self.written)} segment(s); {len(self.fresh)} already up to date"
            + (f"; {len(self.empty)} without a manifest" if self.empty else "")
        ]
        lines += [f"  segment {s}: its writer is live; it writes its index when it closes" for s in self.busy]
        lines += [f"  FAILED: {f}" for f in self.failed]
        return "\n".join(lines)


def index_store(path: str | Path, rebuild: bool = False) -> IndexReport:
    """Write the index of every sealed segment that has none, or a stale or bad one (`rebuild`: every sealed one
    from scratch). Needs write access; readers never need an index (they parse the manifest instead)."""
    root = Path(path)
    vocabulary = store_vocabulary(root)
    try:
        lock = FileLock(root / REPAIR_LOCK, role="synthaug index").acquire()
    except PermissionError:
        raise StoreError(
            f"permission denied writing in {root}: indexes are written by a user who may write the store; "
            "readers work without them (only slower)"
        ) from None
    except LockHeld as held:
        raise StoreError(f"{root} is being repaired by {held.holder}: run `synthaug index` when it is done") from None
    report = IndexReport()
    try:
        for seg in list_segments(root):
            try:
                state = index_segment(root / SEGMENTS / seg, seg, tuple(IMAGE_FORMATS), len(vocabulary), rebuild)
            except OSError as err:
                report.failed.append(f"segment {seg}: {err}")
                continue
            getattr(report, state).append(seg)
    finally:
        lock.release()
    return report


def stats(path: str | Path) -> dict[str, Any]:
    """Counts per class and per segment, and the distribution of each quality figure."""
    store = SampleStore(path)
    recs = store.records
    per_class = np.bincount(recs.classes()[1], minlength=len(store.vocabulary))
    quality = {}
    for k in recs.quality_keys():
        v = recs.quality(k)
        if (present := ~np.isnan(v)).any():
            quality[k] = v[present]
    return {
        "samples": len(store),
        "per_class": {store.vocabulary.names[c]: int(per_class[c]) for c in range(len(store.vocabulary))},
        "per_segment": dict(sorted(recs.segment_counts().items())),
        "quality": {
            k: {
                q: round(float(np.quantile(v, p)), 4)
                for q, p in (("min", 0), ("p10", 0.1), ("median", 0.5), ("p90", 0.9), ("max", 1))
            }
            for k, v in sorted(quality.items())
        },
        "instances": int(recs.column("instances").sum()),
        "producers": producer_states(store.root),
        "bad_manifest_lines": store.stats.bad_lines,
        "problems": [str(p) for p in store.stats.problems[:SHOWN_AT_MOST]],
    }


def producer_states(root: Path) -> dict[str, dict[str, Any]]:
    """{segment: its producer's state, samples produced, rate, last update} from STORE/producers/ ('dead'
    when its status says it runs but its pid is gone)."""
    from synthaug.producer import read_status

    folder = root / STATUS_DIR
    if not folder.is_dir() or folder.is_symlink():
        return {}
    out = {}
    for path in sorted(folder.glob("*.json")):
        if _status_problem(path) is None and (s := read_status(root, path.stem)) is not None:
            out[path.stem] = {
                k: s.get(k) for k in ("state", "was", "pid", "host", "produced", "rate", "updated") if k in s
            }
    return out


def format_stats(s: dict[str, Any]) -> str:
    """stats() as the table `synthaug stats` prints."""
    lines = [f"samples: {s['samples']}   instances: {s['instances']}"]
    lines.append("per class (samples containing it):")
    lines += [f"  {name:<20} {n}" for name, n in s["per_class"].items()]
    lines.append("per segment:")
    lines += [f"  {seg:<40} {n}" for seg, n in s["per_segment"].items()]
    if s["quality"]:
        lines.append("quality:          min      p10   median      p90      max")
        for k, q in s["quality"].items():
            lines.append(f"  {k:<14}" + "".join(f"{q[x]:>9.3f}" for x in ("min", "p10", "median", "p90", "max")))
    if s.get("producers"):
        lines.append("producers:")
        for seg, p in s["producers"].items():
            was = f" (was {p['was']}; its pid {p.get('pid')} is gone)" if p.get("state") == "dead" else ""
            lines.append(f"  {seg:<40} {p.get('state')}{was}, {p.get('produced', 0)} produced")
    if s["bad_manifest_lines"]:
        lines.append(f"bad log lines skipped: {s['bad_manifest_lines']} (`synthaug verify` lists them)")
    lines += [f"  {p}" for p in s.get("problems", [])]
    return "\n".join(lines)

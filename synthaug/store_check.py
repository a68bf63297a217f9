"""What a store may contain: record validation, containment of every path, and line-by-line log parsing.

Every file a store holds is named by a path that must resolve inside the store, symbolic links
included; a record that names anything else is an *unsafe record*: reported, never read, moved,
linked or deleted. Every log file (manifests, quarantine.jsonl, retired.jsonl) is parsed one line
at a time, so one bad line is skipped, counted and reported by file and line, never fatal.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A record id: its segment's name, a dash, and its position in the segment.
ID_FORM = re.compile(r"^([A-Za-z0-9._-]{1,128})-(\d{1,12})$")
SEGMENT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
#: A sample file name: no folder, no leading dot (so neither '.', '..' nor a hidden temporary file).
SAMPLE_FILE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,250}$")
#: Masks and images larger than this many pixels are refused before decoding (PIL's own bomb limit).
MAX_PIXELS = 89_478_485
#: At most this many problems are kept with their details; the counts keep going.
MAX_PROBLEMS = 10_000


class UnsafePathError(ValueError):
    """A path that would leave the store (absolute, '..', another folder, or a symbolic link out of it)."""


@dataclass(frozen=True)
class Problem:
    """One thing found wrong, where: `file` relative to the store, `line` 1-based (0: the whole file)."""

    file: str
    line: int
    kind: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.kind}: {self.message}"


def sample_rel(segment: str, name: str) -> str:
    """The store-relative path of sample file `name` in `segment`."""
    return f"segments/{segment}/samples/{name}"


def check_sample_path(value: Any, segment: str, what: str) -> str | None:
    """Why `value` is not a plain file of segments/<segment>/samples/ (None when it is)."""
    if not isinstance(value, str):
        return f"{what} is {value!r:.80}, not a path string"
    prefix = sample_rel(segment, "")
    name = value[len(prefix) :]
    if not value.startswith(prefix) or not SAMPLE_FILE.match(name):
        return (
            f"{what} path {value!r:.200} is not a file of {prefix} (absolute, '..', or another folder): "
            "it is never read, moved or deleted"
        )
    return None


def _is_int(v: Any) -> bool:
    """An int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A finite int or float that is not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_id(rec: dict[str, Any], segment: str) -> str | None:
    """Why the record's id is not '<segment>-<position>' (None when it is)."""
    sid = rec.get("id")
    m = ID_FORM.match(sid) if isinstance(sid, str) else None
    if m is None or m.group(1) != segment:
        return f"id {sid!r:.80} is not '{segment}-<number>', the form this segment's writer gives"
    return None


def _names_own_files(rec: dict[str, Any], segment: str, image_exts: tuple[str, ...]) -> bool:
    """Whether a record whose id is its segment's (check_id) names exactly its own files, as the usual record does:
    such names pass every check of check_paths (an id has only [A-Za-z0-9._-], does not start with '.' here, and is
    short), so those need not run."""
    sid, image = rec["id"], rec.get("image")
    if not isinstance(image, str) or segment.startswith("."):
        return False
    ext = image.rsplit(".", 1)[-1]
    own_mask = sample_rel(segment, f"{sid}.mask.png")
    return ext in image_exts and image == sample_rel(segment, f"{sid}.{ext}") and rec.get("mask") == own_mask


def check_paths(rec: dict[str, Any], segment: str, image_exts: tuple[str, ...]) -> str | None:
    """Why the record's image or mask path is unsafe or of the wrong kind (None when both are fine)."""
    if check_id(rec, segment) is None and _names_own_files(rec, segment, image_exts):
        return None
    for key in ("image", "mask"):
        reason = check_sample_path(rec.get(key), segment, key)
        if reason:
            return reason
    if not rec["mask"].endswith(".png"):
        return f"mask {rec['mask']!r} is not a .png file"
    if rec["image"].rsplit(".", 1)[-1] not in image_exts:
        return f"image {rec['image']!r} is not one of the store's formats {list(image_exts)}"
    sid = rec.get("id")
    if check_id(rec, segment) is None:  # a record names its own files only: no repair or purge of it touches another's
        image_ext = rec["image"].rsplit(".", 1)[-1]
        if rec["image"] != sample_rel(segment, f"{sid}.{image_ext}") or rec["mask"] != sample_rel(
            segment, f"{sid}.mask.png"
        ):
            return (
                f"its files {rec['image']!r:.120} and {rec['mask']!r:.120} are not {sid}'s own "
                f"({sid}.<ext>, {sid}.mask.png): they may be another sample's, so they are never moved or deleted"
            )
    return None


def check_fields(rec: dict[str, Any], n_classes: int) -> str | None:
    """Why a field other than id and paths has the wrong type or value (None when all are fine)."""
    h, w = rec.get("height"), rec.get("width")
    if not (_is_int(h) and _is_int(w) and h > 0 and w > 0 and h * w <= MAX_PIXELS):
        return f"height {h!r:.40} x width {w!r:.40} are not positive integers of at most {MAX_PIXELS} pixels"
    classes = rec.get("classes", [])
    if not _class_ids(classes, n_classes):
        return f"classes {classes!r:.80} are not a list of class ids in 0..{n_classes - 1}"
    if not isinstance(rec.get("prompt", ""), str):
        return f"prompt {rec['prompt']!r:.80} is not a string"
    if not (rec.get("seed") is None or _is_int(rec["seed"])):
        return f"seed {rec['seed']!r:.80} is not an integer"
    quality = rec.get("quality", {})
    if not isinstance(quality, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in quality.items()):
        return f"quality {quality!r:.80} is not a mapping of names to finite numbers"
    if not isinstance(rec.get("fingerprint", {}), dict):
        return f"fingerprint {rec['fingerprint']!r:.80} is not a mapping"
    if not _is_number(rec.get("created", 0.0)):
        return f"created {rec['created']!r:.40} is not a time in seconds"
    return check_instances(rec.get("instances", []), h, w, n_classes)


_NUMBER_TYPES = (int, float)
_INT_ONLY = frozenset({int})


def _class_ids(classes: Any, n_classes: int) -> bool:
    """Whether `classes` is a list of class ids in 0..n_classes - 1 (ints, not bools)."""
    if type(classes) is list and classes and set(map(type, classes)) == _INT_ONLY:  # the usual list, at C speed
        return min(classes) >= 0 and max(classes) < n_classes
    return isinstance(classes, list) and all(_is_int(c) and 0 <= c < n_classes for c in classes)


def check_instances(instances: Any, h: int, w: int, n_classes: int) -> str | None:
    """Why the instance list is malformed (None when each has a class id, an RLE of the image's size, a box
    and an area). Whether each RLE decodes is checked when the sample is read (and by `verify`)."""
    if type(instances) is not list:
        return f"instances {instances!r:.80} is not a list"
    size = [h, w]
    for k, inst in enumerate(instances):
        try:
            c, rle, box = inst["class_id"], inst["rle"], inst["bbox"]
            ok = type(c) is int and 0 <= c < n_classes and rle["size"] == size and type(inst["area"]) is int
            ok = ok and type(rle["counts"]) in (str, list) and type(box) is list and len(box) == 4
            ok = ok and type(box[0]) in _NUMBER_TYPES and type(box[1]) in _NUMBER_TYPES
            ok = ok and type(box[2]) in _NUMBER_TYPES and type(box[3]) in _NUMBER_TYPES
            ok = ok and (inst.get("score") is None or type(inst["score"]) in _NUMBER_TYPES)
        except (KeyError, TypeError, IndexError):
            ok = False
        if not ok:
            return (
                f"instance {k} {inst!r:.120} lacks a class id in 0..{n_classes - 1}, an RLE of size "
                f"[{h}, {w}], a 4-number bbox or an integer area"
            )
    return None


def check_record(rec: Any, segment: str, n_classes: int, image_exts: tuple[str, ...]) -> tuple[str, str] | None:
    """(kind, reason) if manifest record `rec` of `segment` cannot be used: 'unsafe record' when a path would
    leave the segment's samples/ folder, 'bad record' for a missing key, wrong type or value."""
    if not isinstance(rec, dict):
        return "bad record", f"a JSON {type(rec).__name__}, not an object"
    for key in ("image", "mask"):
        if not isinstance(rec.get(key), str):
            return "bad record", f"{key} is {rec.get(key)!r:.80}, not a path string"
    bad_id = check_id(rec, segment)
    if bad_id is not None or not _names_own_files(rec, segment, image_exts):
        reason = check_paths(rec, segment, image_exts)
        if reason:
            return "unsafe record", reason
    reason = bad_id or check_fields(rec, n_classes)
    return ("bad record", reason) if reason else None


def real_root(root: Path) -> str:
    """The store folder with every symbolic link resolved, as containment checks compare against it."""
    return os.path.realpath(root)


def resolve_inside(root_real: str, root: Path, rel: str) -> str:
    """The real path of store file `rel`, after checking that it (symbolic links resolved) stays inside the store.

    Raises UnsafePathError otherwise; nothing is opened, moved or deleted before this check.
    """
    if os.path.isabs(rel) or "\\" in rel or ".." in Path(rel).parts:
        raise UnsafePathError(f"{rel!r} is absolute or climbs out with '..'")
    real = os.path.realpath(root / rel)
    if not real.startswith(root_real + os.sep):
        raise UnsafePathError(f"{rel!r} resolves to {real}, outside the store {root_real} (a symbolic link?)")
    return real


def lies_within(path: Path, root: Path) -> bool:
    """Whether `path`, symbolic links resolved (those of a part that does not exist yet too), is folder `root` or
    lies inside it; compared by device and inode, so another spelling of the same folder is caught as well."""
    root_stat = os.stat(root)
    real = Path(os.path.realpath(path))
    for folder in (real, *real.parents):
        try:
            if os.path.samestat(os.stat(folder), root_stat):
                return True
        except (FileNotFoundError, NotADirectoryError):
            continue  # not created yet: its parents decide
    return False


def is_plain_dir(path: Path) -> bool:
    """A real folder, not a symbolic link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def read_complete_lines(path: str | Path, offset: int, limit: int | None = None) -> bytes:
    """The bytes of `path` from `offset` up to and including its last newline (a torn tail waits); with `limit`,
    about that many bytes at most (more only to complete one longer line). Never through a symbolic link."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        f.seek(offset)
        chunk = f.read(-1 if limit is None else limit)
        while limit is not None and b"\n" not in chunk and (more := f.read(limit)):
            chunk += more
    return chunk[: chunk.rfind(b"\n") + 1]


def split_lines(chunk: bytes, first_line: int) -> Iterator[tuple[int, int, bytes]]:
    """(line number, start offset within chunk, line with its end) for each non-blank line of `chunk`."""
    pos, number = 0, first_line
    for line in chunk.splitlines(keepends=True):
        if line.strip():
            yield number, pos, line
        pos += len(line)
        number += 1


def parse_line(line: bytes | str) -> Any:
    """One log line's JSON, or a ValueError that says why it is not JSON."""
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError; deep nesting recurses
        return ValueError(f"not JSON ({type(err).__name__}: {err}): {line[:80]!r}")


def parse_lines(chunk: bytes, first_line: int) -> Iterator[tuple[int, int, Any]]:
    """(line number, end offset within chunk, parsed JSON or a ValueError) for each non-blank line of `chunk`."""
    for number, start, line in split_lines(chunk, first_line):
        yield number, start + len(line), parse_line(line)

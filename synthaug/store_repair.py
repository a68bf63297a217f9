"""What `verify --repair` may do to a store, and nothing more: move files into quarantine/, blank bad lines.

Nothing is deleted here: a corrupt sample's files and a crashed writer's leftovers are moved into
``quarantine/`` (each move logged in ``quarantine/moved.jsonl``), and a bad log line is overwritten
with spaces of the same length (so every reader's byte offsets stay right) after its text is saved
in ``quarantine/lines.jsonl``. Only ``purge_quarantine`` deletes, and only what is in quarantine/
(a real folder, never a link). Every path is checked to stay inside the store before it is touched.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
import time
import uuid
from pathlib import Path

from synthaug.store import SEGMENTS, StoreError, append_log, plain_subdir
from synthaug.store_check import resolve_inside, sample_rel
from synthaug.store_lock import REPAIR_LOCK, FileLock, LockHeld

QUARANTINE_DIR = "quarantine"
MOVED_LOG = "moved.jsonl"
LINES_LOG = "lines.jsonl"
#: A file name in a manifest: the runs of these characters (JSON quotes and slashes split them).
_NAME_TOKEN = re.compile(rb"[A-Za-z0-9._-]+")


def take_repair_lock(root: Path) -> FileLock:
    """The store's repair lock; a StoreError naming the holder's pid and host if another repair holds it."""
    try:
        return FileLock(root / REPAIR_LOCK, role="verify --repair").acquire()
    except PermissionError:
        raise StoreError(
            f"permission denied creating {root / REPAIR_LOCK}: a repair moves files inside the store and needs "
            "write access to it; run it as the store's owner (plain `synthaug verify` only reads)"
        ) from None
    except LockHeld as held:
        raise StoreError(
            f"{root} is being repaired by {held.holder}: wait for it to finish, then run `synthaug verify` again"
        ) from None


def manifest_names(data: bytes) -> set[bytes]:
    """Every file-name-like token of a manifest, valid lines or not: a file named anywhere in it is kept."""
    return set(_NAME_TOKEN.findall(data))


def scan_samples(root: Path, segment: str, named: set[bytes]) -> tuple[list[str], list[str], list[str]]:
    """(orphans, temporary files, unsafe entries) of a segment's samples/ folder: files no manifest line names,
    writers' temporary files, and symbolic links or other non-files, which are never touched."""
    orphans: list[str] = []
    temps: list[str] = []
    unsafe: list[str] = []
    try:
        entries = sorted(os.scandir(root / SEGMENTS / segment / "samples"), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return orphans, temps, unsafe
    for e in entries:
        rel = sample_rel(segment, e.name)
        if e.is_symlink() or not e.is_file(follow_symlinks=False):
            unsafe.append(rel)
        elif e.name.startswith(".") and e.name.endswith(".tmp"):
            temps.append(rel)
        elif e.name.encode() not in named:
            orphans.append(rel)
    return orphans, temps, unsafe


def move_to_quarantine(root: Path, rel: str, reason: str) -> str:
    """Move store file `rel` into quarantine/ (never over another file) and log it; returns where it went.
    Raises UnsafePathError, before touching anything, if `rel` is or resolves outside the store."""
    resolve_inside(os.path.realpath(root), root, rel)
    src = root / rel
    if not stat.S_ISREG(os.lstat(src).st_mode):
        raise OSError(f"{rel} is not a plain file (a symbolic link?): left alone")
    qdir = plain_subdir(root, QUARANTINE_DIR)
    dst = qdir / src.name
    if os.path.lexists(dst):
        dst = qdir / f"{src.name}.{uuid.uuid4().hex[:8]}"
    os.rename(src, dst)
    moved = dst.relative_to(root).as_posix()
    entry = {"from": rel, "to": moved, "reason": reason, "time": time.time()}
    append_log(qdir, MOVED_LOG, (json.dumps(entry) + "\n").encode())
    return moved


def restore_if_named(root: Path, segment: str, moved: dict[str, str], named: set[bytes]) -> int:
    """Move back every file of `moved` ({from: to}) that the segment's manifest now names; returns how many.
    A belt to the segment lock's braces: a writer that took no lock (an older synthaug) loses nothing."""
    back = 0
    for rel, dst in moved.items():
        if Path(rel).name.encode() in named and not os.path.lexists(root / rel):
            os.rename(root / dst, root / rel)
            back += 1
    return back


def blank_lines(root: Path, rel: str, lines: set[int]) -> int:
    """Overwrite the complete lines `lines` (1-based) of log file `rel` with spaces, keeping every byte offset,
    after saving their text to quarantine/lines.jsonl; returns how many were blanked."""
    resolve_inside(os.path.realpath(root), root, rel)
    fd = os.open(root / rel, os.O_RDWR | os.O_NOFOLLOW)
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
        data = data[: data.rfind(b"\n") + 1]
        pos, done = 0, 0
        for number, line in enumerate(data.splitlines(keepends=True), 1):
            if number in lines and line.strip():
                text = line[:-1].decode("utf-8", "backslashreplace")
                saved = {"file": rel, "line": number, "text": text, "time": time.time()}
                append_log(plain_subdir(root, QUARANTINE_DIR), LINES_LOG, (json.dumps(saved) + "\n").encode())
                os.pwrite(fd, b" " * (len(line) - 1), pos)
                done += 1
            pos += len(line)
        return done
    finally:
        os.close(fd)


def open_quarantine(root: Path) -> int | None:
    """A descriptor of STORE/quarantine/ opened without following links (None if there is none), so a purge
    deletes only in the store's own folder: a StoreError, naming the path, if it is a link or not a folder."""
    qdir = root / QUARANTINE_DIR
    try:
        return os.open(qdir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        what = f"a symbolic link to {os.readlink(qdir)}" if os.path.islink(qdir) else "not a folder"
        raise StoreError(
            f"{qdir} is {what}, not the store's own quarantine folder: nothing was deleted; "
            "check what it holds, remove the link (or file), then run `synthaug verify --repair` again"
        ) from None


def purge_quarantine(path: str | Path) -> int:
    """Delete the files `verify --repair` moved into quarantine/ (its logs stay); returns how many.
    The explicit, separate step after which quarantined files are gone for good."""
    root = Path(path)
    lock = take_repair_lock(root)
    try:
        fd = open_quarantine(root)
        if fd is None:
            return 0
        try:
            gone = 0
            for e in os.scandir(fd):
                if e.is_file(follow_symlinks=False) and e.name not in (MOVED_LOG, LINES_LOG):
                    os.unlink(e.name, dir_fd=fd)
                    gone += 1
            return gone
        finally:
            os.close(fd)
    finally:
        lock.release()

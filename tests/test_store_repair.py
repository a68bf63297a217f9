"""Repair on a live store, locks that name their holder, and permissions that follow the umask.

Writers are real processes killed with SIGKILL; the other user is a real forked process running as
`nobody`. Each case ends with the store opening, `verify` naming the problem, nothing outside the
store changed, and every committed sample readable.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_store import HERE, _fill, _spawn
from test_store_adversarial import _tree

from synthaug.cli import main as cli
from synthaug.store import MANIFEST, SEGMENTS, SampleStore, StoreError, StoreWriter, create_store
from synthaug.store_lock import REPAIR_LOCK, WRITER_LOCK, FileLock
from synthaug.store_ops import stats, verify
from synthaug.toy.world import TOY_VOCABULARY, render_seed

WRITER = str(HERE / "store_writer_proc.py")


def _start_writer(path: Path, segment: str, first: int) -> Any:
    """A writer process that keeps writing until killed (or for about 5 minutes at most); returns once its first
    sample is committed."""
    proc = _spawn(WRITER, str(path), segment, str(first), "20000", "0", "0.01")
    assert proc.stdout.readline().strip() == str(first), proc.stderr.read()
    return proc


def _kill(proc: Any) -> list[int]:
    """SIGKILL a writer; the seeds it reported committed (it prints a seed only after add() returned)."""
    os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    return [int(x) for x in out.split()]


def test_repair_refuses_while_another_repair_holds_the_lock_naming_pid_and_host(tmp_path):
    path = _fill(tmp_path / "s", range(2))
    with FileLock(path / REPAIR_LOCK, role="verify --repair").acquire():
        with pytest.raises(StoreError, match=rf"pid {os.getpid()} on host {socket.gethostname()}"):
            verify(path, repair=True)
        assert cli(["verify", str(path), "--repair"]) == 2
    assert verify(path, repair=True).repaired


def test_writer_waits_for_then_names_a_repair_holding_its_segment(tmp_path):
    path = _fill(tmp_path / "s", range(2), segment="w0")
    lock = FileLock(path / SEGMENTS / "w0" / WRITER_LOCK, role="verify --repair").acquire()
    with lock, pytest.raises(StoreError, match=rf"held by verify --repair pid {os.getpid()} on host"):
        StoreWriter(path, segment="w0", resume=True, lock_wait_s=0.2)
    with StoreWriter(path, segment="w0", resume=True, fsync=False) as w:
        w.add(render_seed(5, 32).to_sample())
    assert len(SampleStore(path)) == 3


def test_repair_leaves_a_live_writers_files_alone_then_quarantines_them_once_it_died(tmp_path):
    path = _fill(tmp_path / "s", range(2))
    outside = tmp_path / "outside"
    outside.mkdir()
    before = _tree(outside)
    proc = _start_writer(path, "live", 1000)
    orphan = path / SEGMENTS / "live" / "samples" / "live-99999999.png"
    orphan.write_bytes(b"in flight, or left by a crash")
    report = verify(path, repair=True)
    assert f"segment live (writer: writer pid {proc.pid} on host {socket.gethostname()}" in report.summary()
    assert orphan.exists() and not report.remaining
    committed = _kill(proc)
    report = verify(path, repair=True)
    assert not orphan.exists() and (path / "quarantine" / orphan.name).exists() and "moved" in report.summary()
    assert cli(["verify", str(path), "--purge-quarantine"]) == 0
    assert not (path / "quarantine" / orphan.name).exists()
    store = SampleStore(path)
    assert {1000 + i for i in range(len(committed))} <= {r["seed"] for r in store.records}
    assert all(store.try_read_record(r) is not None for r in store.records) and verify(path).clean
    assert _tree(outside) == before


def test_repair_racing_two_live_writers_loses_no_committed_sample(tmp_path):
    """Six rounds: 2 writers append while repairs run; then both are killed mid-write and a repair cleans up."""
    path = tmp_path / "s"
    create_store(path, TOY_VOCABULARY)
    committed: list[int] = []
    for rnd in range(6):
        writers: list[Any] = []
        try:
            for k in range(2):
                writers.append(_start_writer(path, f"r{rnd}w{k}", rnd * 100_000 + k * 10_000))
            for _ in range(3):
                report = verify(path, repair=True)
                assert len(report.busy) == 2 and not report.remaining, report.summary()
                time.sleep(0.05)
        finally:  # a failed check must not leave writers filling the disk for the rest of the run
            for w in writers:
                committed += _kill(w)
        report = verify(path, repair=True)
        assert not report.busy and not report.remaining, report.summary()
    store = SampleStore(path)
    seeds = {r["seed"]: r for r in store.records}
    lost = sorted(set(committed) - set(seeds))
    assert not lost, f"{len(lost)} committed samples lost: {lost[:10]}"
    for seed in committed:
        sample = store.read_record(seeds[seed])
        truth = render_seed(seed, 32)
        assert np.array_equal(sample.image, truth.image) and np.array_equal(sample.mask, truth.semantic)
    assert verify(path).clean and len(committed) >= 12


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o022, 0o644), (0o077, 0o600)])
def test_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = _fill(tmp_path / "s", range(1))
        with StoreWriter(path, segment="w1") as w:  # the fsync path (atomic_write_bytes) too
            w.add(render_seed(1, 32).to_sample())
    finally:
        os.umask(old)
    rec = SampleStore(path).records[1]
    for rel in ("store.json", rec["image"], rec["mask"], f"{SEGMENTS}/w1/{MANIFEST}"):
        assert stat.S_IMODE((path / rel).stat().st_mode) == mode, rel


def _cli_err(argv: list[str]) -> tuple[int, str]:
    """The CLI's exit code and what it printed on stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli(argv)
    return code, err.getvalue()


def _as_nobody(fn: Callable[[], Any]) -> Any:
    """Run `fn` in a forked child that has become user `nobody` (real permissions, not a mock); its JSON result."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, json.dumps(fn()).encode())
        except BaseException as err:
            os.write(w, json.dumps({"error": f"{type(err).__name__}: {err}"}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    return json.loads(data)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_permission_denied_is_reported_as_such_never_as_corruption():
    base = Path(tempfile.mkdtemp(prefix="synthaug-perm-"))  # under /tmp, which other users may enter
    try:
        os.chmod(base, 0o755)
        path = _fill(base / "s", range(4))
        outside = base / "outside"
        outside.mkdir()
        before = _tree(outside)
        rec = SampleStore(path).records[1]
        os.chmod(path / rec["mask"], 0o600)  # as the old writer (or a private umask) left it
        verify(path)  # the parent imports every module the child will need

        def other_user() -> dict[str, Any]:
            report = verify(path)
            return {
                "samples": stats(path)["samples"],
                "summary": report.summary(),
                "corrupt": len(report.corrupt),
                "repair": _cli_err(["verify", str(path), "--repair"]),
            }

        seen = _as_nobody(other_user)
        assert seen.get("error") is None, seen
        assert seen["samples"] == 4 and seen["corrupt"] == 0
        assert f"segments/w0/manifest.jsonl:2: permission denied: sample {rec['id']}" in seen["summary"]
        assert "not corruption" in seen["summary"] and seen["repair"][0] == 2
        assert "permission denied creating" in seen["repair"][1]
        assert not (path / "quarantine").exists() and not (path / "quarantine.jsonl").exists()
        os.chmod(path / "store.json", 0o600)
        code, err = _as_nobody(lambda: _cli_err(["stats", str(path)]))
        assert code == 2 and "permission denied reading the store description" in err
        os.chmod(path / "store.json", 0o644)
        store = SampleStore(path)  # the owner reads everything; verify by the owner is clean
        assert all(store.try_read_record(r) is not None for r in store.records) and verify(path).clean
        assert _tree(outside) == before
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("target", ["a folder outside the store", "the store's own samples folder"])
def test_purge_quarantine_refuses_a_quarantine_that_is_a_symbolic_link(tmp_path, target):
    """STORE/quarantine linked elsewhere: the purge names the link and says to remove it, in one line and exit 2
    (not a traceback), and deletes nothing, neither where the link points nor in the store."""
    path = _fill(tmp_path / "s", range(3))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.png").write_bytes(b"must survive")
    link = path / "quarantine"
    link.symlink_to(outside if target.startswith("a folder") else path / SEGMENTS / "w0" / "samples")
    before_outside, before_store = _tree(outside), _tree(path)
    code, err = _cli_err(["verify", str(path), "--repair", "--purge-quarantine"])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{link} is a symbolic link" in err and "remove the link" in err and "nothing was deleted" in err, err
    assert _tree(outside) == before_outside
    assert {k: v for k, v in _tree(path).items() if k != REPAIR_LOCK} == before_store  # the lock is the store's own
    store = SampleStore(path)
    assert len(store) == 3 and all(store.try_read_record(r) is not None for r in store.records)

"""The online producer: stops cleanly on signals, rolls a target pool, and scales out under torchrun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from synthaug.cli import main as cli
from synthaug.producer import read_status
from synthaug.store import SampleStore
from synthaug.supervisor import ProducerSupervisor

FAST = "batch_size: 2\nsteps: 4\n"


@pytest.fixture
def fast_cfg(tmp_path) -> Path:
    path = tmp_path / "fast.yaml"
    path.write_text(FAST)
    return path


def produce(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "synthaug.cli", "produce", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_finishes_the_batch_and_leaves_no_partial_sample(tmp_path, fast_cfg):
    store = tmp_path / "store"
    proc = produce("--config", str(fast_cfg), "--store", str(store), "--segment", "p0")
    wait_for(lambda: (read_status(store, "p0") or {}).get("produced", 0) >= 2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    status = read_status(store, "p0")
    assert status["state"] == "stopped" and status["produced"] % 2 == 0  # whole batches only
    assert len(SampleStore(store)) == status["produced"]
    assert cli(["verify", str(store)]) == 0


@pytest.mark.slow
def test_rolling_pool_retires_the_oldest_and_purges_after_the_grace(tmp_path, fast_cfg):
    store = tmp_path / "store"
    code = cli(
        [
            "produce",
            "--config",
            str(fast_cfg),
            "--store",
            str(store),
            "--max-samples",
            "8",
            "--target-pool",
            "4",
            "--retire-grace",
            "0",
            "--segment",
            "p0",
        ]
    )
    assert code == 0
    s = SampleStore(store)
    assert [r["id"] for r in s.records] == [f"p0-{i:08d}" for i in range(4, 8)]  # the newest four live
    assert len(s.retired) == 4 and len(s.all_records) == 8
    files = sorted(p.name for p in (store / "segments" / "p0" / "samples").iterdir())
    assert len(files) == 8 and all(int(f.split("-")[1][:8]) >= 4 for f in files)  # retired files purged
    assert cli(["verify", str(store)]) == 0


def test_a_snapshot_keeps_samples_retired_after_it(tmp_path):
    """Readers see a consistent snapshot: a retirement after it changes nothing until the next snapshot."""
    from synthaug.pool import SyntheticPool
    from synthaug.store import StoreWriter, create_store, retire
    from synthaug.toy.world import TOY_VOCABULARY, render_seed

    store = create_store(tmp_path / "s", TOY_VOCABULARY)
    with StoreWriter(store, "p0", fsync=False) as w:
        for i in range(6):
            w.add(render_seed(i, 16).to_sample())
    pool = SyntheticPool(SampleStore(store), lease=True)  # a training reader beside a rolling producer
    snap = pool.current_snapshot()
    retire(store, ["p0-00000000", "p0-00000001"])
    other = SyntheticPool(SampleStore(store), lease=True)  # a reader that already sees the retirement
    assert other.adopt(snap) == 6 and pool.adopt(snap) == 6
    assert other.adopt(other.current_snapshot()) == 4

    # Files of retired samples stay while a live reader's snapshot predates the retirement (its lease) ...
    from synthaug.config import GenerationConfig
    from synthaug.producer import Producer

    producer = Producer(GenerationConfig(), store, segment="p0", retire_grace_s=0)
    first = store / SampleStore(store).all_records[0]["image"]
    producer._purge(SampleStore(store))
    assert first.exists()
    # ... and go once every live reader has adopted a snapshot that saw it.
    pool.adopt(pool.current_snapshot())
    producer._purge(SampleStore(store))
    assert not first.exists()


def test_supervisor_restarts_a_killed_producer_with_backoff(tmp_path, fast_cfg):
    store = tmp_path / "store"
    messages: list[str] = []
    sup = ProducerSupervisor(store, config=fast_cfg, segment="sup", backoff_s=0.5, log_fn=messages.append)
    sup.start()
    try:
        wait_for(lambda: (read_status(store, "sup") or {}).get("produced", 0) >= 2)
        # On the CPU it yields to the training run: one torch thread, lowered priority.
        assert sup.command()[-4:] == ["--threads", "1", "--nice", "10"]
        assert os.getpriority(os.PRIO_PROCESS, read_status(store, "sup")["pid"]) >= 10
        os.kill(read_status(store, "sup")["pid"], signal.SIGKILL)
        wait_for(lambda: sup.restarts >= 1 and sup.state == "running")
        first = len(SampleStore(store))
        wait_for(lambda: len(SampleStore(store)) > first)  # the restarted producer writes again
    finally:
        sup.stop()
    assert any("exited with -9; restarting" in m for m in messages), messages
    assert sup.state == "stopped" and cli(["verify", str(store)]) == 0
    ids = [r["id"] for r in SampleStore(store).records]
    assert len(ids) == len(set(ids))
    seeds = [r["seed"] for r in SampleStore(store).records]
    assert len(seeds) == len(set(seeds))  # the restart moved on to fresh seeds


@pytest.mark.slow
def test_two_producers_under_torchrun_write_distinct_samples(tmp_path, fast_cfg):
    store = tmp_path / "store"
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "-m",
            "synthaug.cli",
            "produce",
            "--config",
            str(fast_cfg),
            "--store",
            str(store),
            "--max-samples",
            "4",
            "--segment",
            "node0",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    s = SampleStore(store)
    segments = sorted({r["image"].split("/")[1] for r in s.records})
    assert segments == ["node0-rank0", "node0-rank1"] and len(s) == 8
    assert len({r["seed"] for r in s.records}) == 8 and len({r["id"] for r in s.records}) == 8
    images = {(store / r["image"]).read_bytes() for r in s.records}
    assert len(images) == 8
    assert json.loads((store / "producers" / "node0-rank1.json").read_text())["state"] == "stopped"


def test_a_status_whose_pid_is_gone_reads_dead(tmp_path, capsys):
    """A producer killed with SIGKILL never writes 'stopped': its status must not claim it still runs."""
    import json
    import socket
    import subprocess

    from synthaug.producer import status_path
    from synthaug.store import create_store
    from synthaug.toy.world import TOY_VOCABULARY

    store = create_store(tmp_path / "s", TOY_VOCABULARY)
    gone = subprocess.Popen(["sleep", "0"])
    gone.wait()  # a pid that existed and is now gone
    for seg, pid, host in (("dead0", gone.pid, socket.gethostname()), ("alive0", os.getpid(), socket.gethostname()),
                           ("far0", gone.pid, "another-host")):  # fmt: skip
        path = status_path(store, seg)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"segment": seg, "pid": pid, "host": host, "state": "producing", "produced": 4}))
    assert read_status(store, "dead0")["state"] == "dead" and read_status(store, "dead0")["was"] == "producing"
    assert read_status(store, "alive0")["state"] == "producing"
    assert read_status(store, "far0")["state"] == "producing"  # another host's pid is not judged here
    assert cli(["stats", str(store)]) == 0
    printed = capsys.readouterr().out
    assert f"dead (was producing; its pid {gone.pid} is gone), 4 produced" in printed

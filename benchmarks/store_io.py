#!/usr/bin/env python3
"""Store I/O: read throughput against a plain PIL folder, append throughput, refresh cost at 100k records, and
opening and refreshing indexed stores of 100k and 1M records side by side.

    python benchmarks/store_io.py [--samples 2000] [--size 128] [--records 100000] [--scale 100000 1000000]

Paired measurements run interleaved in one process (A, B, A, B, ...) and the ratio is taken
of the medians, since this machine is shared and noisy. The scale stores are made as the issue
describes: one manifest of 100k records (sample files are not needed to open or refresh a store)
copied into as many segments as needed, then indexed with `synthaug index`; each is measured in a
fresh process (open time and added resident memory, refresh, and what `mix.refresh()` does: the
pool's current_snapshot() and adopt(), with nothing new and with 1,000 new records in a live segment).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from results_io import result_path, write_result

from synthaug.pool import PoolParams, SyntheticPool
from synthaug.sample import Sample
from synthaug.store import MANIFEST, SEGMENTS, SampleStore, StoreWriter, create_store
from synthaug.store_ops import index_store
from synthaug.toy.world import TOY_VOCABULARY, render_seed

PER_SEGMENT = 100_000
NEW_RECORDS = 1000


def read_plain(folder: Path, names: list[str]) -> None:
    for n in names:
        with Image.open(folder / f"{n}.png") as im:
            np.asarray(im.convert("RGB"))
        with Image.open(folder / f"{n}.mask.png") as im:
            np.asarray(im)


def read_store(store: SampleStore, keep: list[int]) -> None:
    for i in keep:  # a fresh Record each time: its manifest line is read back and checked on every read
        store.read(i)


def bulk_line(rec: dict, k: int, segment: str = "bulk", rng: random.Random | None = None) -> str:
    """Record `rec` as sample k of `segment` (a reader takes only records whose id and paths are the segment's
    own), as one manifest line; with `rng`, with random classes and quality as a real store has."""
    sid = f"{segment}-{k:08d}"
    paths = {"image": f"{SEGMENTS}/{segment}/samples/{sid}.png", "mask": f"{SEGMENTS}/{segment}/samples/{sid}.mask.png"}
    extra = {}
    if rng is not None:
        classes = sorted(rng.sample(range(len(TOY_VOCABULARY)), rng.randint(1, len(TOY_VOCABULARY))))
        extra = {"classes": classes, "quality": {"mean_confidence": round(rng.random(), 4)}, "created": 1e9 + k}
    return json.dumps({**rec, **extra, "id": sid, **paths}, separators=(",", ":")) + "\n"


def parse_args() -> argparse.Namespace:
    """The command line: sample count and size, manifest size for the refresh test, rounds, whether to save."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--scale", type=int, nargs="*", default=[100_000, 1_000_000], help="indexed store sizes")
    ap.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # internal: measure one scale store
    ap.add_argument("--no-save", action="store_true", help="print only; write no file under benchmarks/results/")
    return ap.parse_args()


def measure_append(store_path: Path, samples: list[Sample]) -> dict[str, float]:
    """Samples appended per second without and with fsync (at most 300 with fsync, which is slow), each in its segment."""
    results = {}
    for fsync in (False, True):
        n = len(samples) if not fsync else min(len(samples), 300)
        t0 = time.perf_counter()
        with StoreWriter(store_path, segment=f"append-fsync{int(fsync)}", fsync=fsync) as w:
            for s in samples[:n]:
                w.add(s)
        results[f"append_samples_per_s_fsync_{fsync}"] = round(n / (time.perf_counter() - t0), 1)
    return results


def copy_to_plain(store_path: Path, store: SampleStore, plain: Path) -> tuple[list[int], list[str]]:
    """Copy the files of the no-fsync segment into a plain folder, for the read comparison; their indices and names."""
    plain.mkdir()
    keep = [i for i, r in enumerate(store.records) if "fsync0" in r["id"]]
    names = []
    for i in keep:
        rec = store.records[i]
        name = rec["id"]
        shutil.copyfile(store_path / rec["image"], plain / f"{name}.png")
        shutil.copyfile(store_path / rec["mask"], plain / f"{name}.mask.png")
        names.append(name)
    return keep, names


def measure_reads(store_path: Path, plain: Path, keep: list[int], names: list[str], rounds: int) -> dict[str, float]:
    """Read rates of the same samples from the plain folder and from the (indexed) store, interleaved, and their
    ratio."""
    only = SampleStore(store_path)
    assert only.stats.indexed == len(only) and only.stats.parsed == 0, "the writers' indexes were not used"
    t_plain, t_store = [], []
    for _ in range(rounds):  # chunks of 100 samples alternate, so both see the same load on a shared machine
        a = b = 0.0
        for start in range(0, len(names), 100):
            t0 = time.perf_counter()
            read_plain(plain, names[start : start + 100])
            a += time.perf_counter() - t0
            t0 = time.perf_counter()
            read_store(only, keep[start : start + 100])
            b += time.perf_counter() - t0
        t_plain.append(a)
        t_store.append(b)
    plain_rate = len(names) / statistics.median(t_plain)
    store_rate = len(names) / statistics.median(t_store)
    return {
        "read_plain_per_s": round(plain_rate, 1),
        "read_store_per_s": round(store_rate, 1),
        "read_ratio_store_vs_plain": round(store_rate / plain_rate, 3),
    }


def measure_refresh(big_path: Path, rec: dict, records: int, rounds: int) -> dict[str, float]:
    """Open time of a store whose manifest holds `records` lines, and refresh times with nothing and 10 lines new."""
    big = create_store(big_path, TOY_VOCABULARY)
    seg = big / SEGMENTS / "bulk"
    (seg / "samples").mkdir(parents=True)
    with open(seg / MANIFEST, "w") as f:
        for k in range(records):
            f.write(bulk_line(rec, k))
    t0 = time.perf_counter()
    reader = SampleStore(big)
    results = {"open_s_at_records": round(time.perf_counter() - t0, 3)}
    refresh_noop, refresh_new = [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        reader.refresh()
        refresh_noop.append(time.perf_counter() - t0)
        with open(seg / MANIFEST, "a") as f:
            for k in range(10):
                f.write(bulk_line(rec, records + 10 * r + k))
        t0 = time.perf_counter()
        assert reader.refresh() == 10
        refresh_new.append(time.perf_counter() - t0)
    results.update(
        records=len(reader),
        refresh_nothing_new_ms=round(1000 * statistics.median(refresh_noop), 3),
        refresh_10_new_ms=round(1000 * statistics.median(refresh_new), 3),
    )
    return results


def make_scale_store(path: Path, rec: dict, records: int) -> dict[str, float]:
    """A store of `records` records: one manifest of PER_SEGMENT lines copied into segments bulk0, bulk1, ...
    (sample files are not needed to open or refresh it), then indexed as `synthaug index` does."""
    create_store(path, TOY_VOCABULARY)
    rng = random.Random(0)
    one = "".join(bulk_line(rec, k, "bulk0", rng) for k in range(PER_SEGMENT)).encode()
    for s in range(records // PER_SEGMENT):
        seg = path / SEGMENTS / f"bulk{s}"
        (seg / "samples").mkdir(parents=True)
        (seg / MANIFEST).write_bytes(one.replace(b"bulk0", f"bulk{s}".encode()))
    (path / SEGMENTS / "live" / "samples").mkdir(parents=True)
    (path / SEGMENTS / "live" / MANIFEST).write_bytes(b"")
    t0 = time.perf_counter()
    report = index_store(path)
    assert {f"bulk{s}" for s in range(records // PER_SEGMENT)} <= set(report.written), report.summary()
    return {
        "index_build_s": round(time.perf_counter() - t0, 2),
        "manifest_mb": round(len(one) * records / PER_SEGMENT / 2**20),
    }


def rss_mb(field: str = "VmRSS") -> float:
    """This process's resident memory (or its peak, VmHWM) in MiB, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure_scale(path: Path, rounds: int) -> dict[str, float]:
    """In this (fresh) process: open the store, then time refresh and pool current_snapshot() + adopt() (what
    mix.refresh() does) with nothing new and with NEW_RECORDS new records appended to the live segment."""
    before = rss_mb()
    t0 = time.perf_counter()
    store = SampleStore(path)
    out: dict[str, float] = {"open_s": round(time.perf_counter() - t0, 3)}
    out["open_rss_added_mb"] = round(rss_mb() - before, 1)
    out["records"] = len(store)
    out["indexed"] = store.stats.indexed
    t = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        store.refresh()
        t.append(time.perf_counter() - t0)
    out["refresh_nothing_new_ms"] = round(1000 * statistics.median(t), 3)
    rec = dict(store.records[0])
    live = path / SEGMENTS / "live" / MANIFEST
    k = 0
    for policy in ("uniform", "class_balanced", "fresh", "quality"):
        pool = SyntheticPool(store, PoolParams(policy=policy))
        t0 = time.perf_counter()
        pool.adopt(pool.current_snapshot())
        out[f"{policy}_first_adopt_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        noop, new, new_cpu = [], [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            pool.adopt(pool.current_snapshot())
            noop.append(time.perf_counter() - t0)
            with open(live, "a") as f:
                f.write("".join(bulk_line(rec, k + j, "live") for j in range(NEW_RECORDS)))
            k += NEW_RECORDS
            t0, c0 = time.perf_counter(), time.thread_time()
            size = pool.adopt(pool.current_snapshot())
            new.append(time.perf_counter() - t0)
            new_cpu.append(time.thread_time() - c0)
            assert size == out["records"] + k, (size, k)
        # The median, the best round (what the code costs when the shared machine lets it run), and the median
        # CPU time of this thread (what the code costs whatever else the machine runs).
        out[f"{policy}_mix_refresh_nothing_new_ms"] = round(1000 * statistics.median(noop), 2)
        out[f"{policy}_mix_refresh_{NEW_RECORDS}_new_ms"] = round(1000 * statistics.median(new), 2)
        out[f"{policy}_mix_refresh_{NEW_RECORDS}_new_best_ms"] = round(1000 * min(new), 2)
        out[f"{policy}_mix_refresh_{NEW_RECORDS}_new_cpu_ms"] = round(1000 * statistics.median(new_cpu), 2)
    out["peak_rss_added_mb"] = round(rss_mb("VmHWM") - before, 1)
    if out["records"] <= PER_SEGMENT * 1.05:  # the same store without its index, for comparison (slow at 1M)
        t0 = time.perf_counter()
        SampleStore(path, index=False)
        out["open_s_without_index"] = round(time.perf_counter() - t0, 3)
    return out


def run_scale(args: argparse.Namespace, tmp: Path, rec: dict) -> dict[str, dict[str, float]]:
    """Each scale store made, indexed, and measured in a fresh process (one at a time: clean memory figures)."""
    out = {}
    for records in args.scale:
        path = tmp / f"scale{records}"
        made = make_scale_store(path, rec, records)
        cmd = [sys.executable, __file__, "--measure", str(path), "--rounds", str(args.rounds)]
        measured = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        out[f"scale_{records}"] = {**made, **measured}
        shutil.rmtree(path, ignore_errors=True)
    return out


def run_benchmark(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    """Every measurement, in scratch folder `tmp`: append, then reads against a plain folder, then refresh at scale."""
    samples = [render_seed(s, args.size).to_sample() for s in range(args.samples)]
    store_path = create_store(tmp / "store", TOY_VOCABULARY)
    results = measure_append(store_path, samples)
    # Same files as a plain folder, for the read comparison.
    plain = tmp / "plain"
    store = SampleStore(store_path)
    keep, names = copy_to_plain(store_path, store, plain)
    results.update(measure_reads(store_path, plain, keep, names, args.rounds))
    # Refresh cost with many records: one manifest of N lines, then 10 appended.
    rec = dict(store.records[0])
    results.update(measure_refresh(tmp / "big", rec, args.records, args.rounds))
    shutil.rmtree(tmp / "big", ignore_errors=True)
    results["image_size"] = args.size
    results.update(run_scale(args, tmp, rec))
    return results


def main() -> None:
    """Run the benchmark in a scratch folder, print the results and (unless --no-save) write them under results/."""
    args = parse_args()
    if args.measure:
        print(json.dumps(measure_scale(args.measure, args.rounds)))
        return
    tmp = Path(tempfile.mkdtemp(prefix="synthaug-bench-"))
    try:
        results = run_benchmark(args, tmp)
        print(json.dumps(results, indent=2))
        if not args.no_save:
            config = {"samples": args.samples, "size": args.size, "records": args.records, "rounds": args.rounds}
            config["scale"] = args.scale
            write_result(result_path("store_io", **config), {"date": time.strftime("%Y-%m-%d"), **results})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

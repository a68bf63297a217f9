#!/usr/bin/env python3
"""Store I/O: read throughput against a plain PIL folder, append throughput, refresh cost at 100k records.

    python benchmarks/store_io.py [--samples 2000] [--size 128] [--records 100000]

Paired measurements run interleaved in one process (A, B, A, B, ...) and the ratio is taken
of the medians, since this machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from results_io import result_path, write_result

from synthaug.sample import Sample
from synthaug.store import MANIFEST, SEGMENTS, SampleStore, StoreWriter, create_store
from synthaug.toy.world import TOY_VOCABULARY, render_seed


def read_plain(folder: Path, names: list[str]) -> None:
    for n in names:
        with Image.open(folder / f"{n}.png") as im:
            np.asarray(im.convert("RGB"))
        with Image.open(folder / f"{n}.mask.png") as im:
            np.asarray(im)


def read_store(store: SampleStore) -> None:
    for i in range(len(store)):
        store.read(i)


def bulk_line(rec: dict, k: int) -> str:
    """Record `rec` as sample k of segment 'bulk' (a reader takes only records whose id and paths are the
    segment's own), as one manifest line."""
    sid = f"bulk-{k:08d}"
    paths = {"image": f"{SEGMENTS}/bulk/samples/{sid}.png", "mask": f"{SEGMENTS}/bulk/samples/{sid}.mask.png"}
    return json.dumps({**rec, "id": sid, **paths}, separators=(",", ":")) + "\n"


def parse_args() -> argparse.Namespace:
    """The command line: sample count and size, manifest size for the refresh test, rounds, whether to save."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
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
    """Read rates of the same samples from the plain folder and from the store, interleaved, and their ratio."""
    only = SampleStore(store_path)
    only.records = [only.records[i] for i in keep]
    t_plain, t_store = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        read_plain(plain, names)
        t_plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        read_store(only)
        t_store.append(time.perf_counter() - t0)
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
    results.update(measure_refresh(tmp / "big", dict(store.records[0]), args.records, args.rounds))
    results["image_size"] = args.size
    return results


def main() -> None:
    """Run the benchmark in a scratch folder, print the results and (unless --no-save) write them under results/."""
    args = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="synthaug-bench-"))
    try:
        results = run_benchmark(args, tmp)
        print(json.dumps(results, indent=2))
        if not args.no_save:
            config = {"samples": args.samples, "size": args.size, "records": args.records, "rounds": args.rounds}
            write_result(result_path("store_io", **config), {"date": time.strftime("%Y-%m-%d"), **results})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

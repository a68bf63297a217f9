#!/usr/bin/env python3
"""Consumer-side cost of refreshing the pool while a live producer writes, against the training step time.

    python benchmarks/producer_refresh.py [--iters 400] [--interval 20]

Runs mmseg's tools/train.py on the toy world with `configs/mmseg/toy_fcn_mix_online.py` (a
SyntheticProducerHook fills the store while SyntheticPoolHook refreshes it every `--interval`
iterations) and reads, from the same log, the time of each refresh and the training step time.
Goal: refresh cost per iteration (refresh time / interval) at most 1% of the step time.
Writes benchmarks/results/producer_refresh.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_io import result_path, write_result

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--interval", type=int, default=20)
    args = ap.parse_args()
    from synthaug.toy.dataset import write_toy_dataset

    train = Path(importlib.util.find_spec("mmseg").origin).parent / ".mim" / "tools" / "train.py"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_toy_dataset(work / "data" / "toy", {"train": 20, "val": 10})
        (work / "fast.yaml").write_text("batch_size: 4\nsteps: 10\n")
        cmd = [
            sys.executable,
            str(train),
            str(ROOT / "configs" / "mmseg" / "toy_fcn_mix_online.py"),
            "--work-dir",
            str(work / "work"),
            "--cfg-options",
            f"train_cfg.max_iters={args.iters}",
            f"train_cfg.val_interval={args.iters}",
            f"custom_hooks.0.interval={args.interval}",
            "custom_hooks.0.log_interval=10",
            f"custom_hooks.1.config={work / 'fast.yaml'}",
        ]
        out = subprocess.run(cmd, cwd=work, capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in out.splitlines() if "Iter(train)" in ln]
    step = [float(re.search(r" time: ([\d.]+)", ln).group(1)) for ln in lines]
    refresh = [float(re.search(r"synthaug_refresh_ms: ([\d.]+)", ln).group(1)) for ln in lines if "refresh_ms" in ln]
    pools = [float(re.search(r"synthaug_pool_size: ([\d.]+)", ln).group(1)) for ln in lines if "pool_size" in ln]
    refresh = [r for r in refresh if r > 0]
    step_s = statistics.median(step)
    refresh_ms = statistics.median(refresh)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "iterations": args.iters,
        "refresh_interval": args.interval,
        "step_time_s_median": round(step_s, 4),
        "refresh_ms_median": round(refresh_ms, 3),
        "refresh_ms_max": round(max(refresh), 3),
        "pool_size_first_last": [pools[0], pools[-1]],
        "refresh_cost_per_iteration_over_step_time": round(refresh_ms / 1000 / args.interval / step_s, 5),
    }
    print(json.dumps(result, indent=2))
    write_result(result_path("producer_refresh", iterations=args.iters, interval=args.interval), result)


if __name__ == "__main__":
    main()

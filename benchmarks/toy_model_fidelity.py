#!/usr/bin/env python3
"""Fidelity of a toy model over several sets of 200 prompts, pooled, with its standard error.

    python benchmarks/toy_model_fidelity.py [--seeds 10000 20000 30000 40000 50000] [--scheduler ddim]

One set of 200 prompts (about 400 objects) pins fidelity down to about +-0.015, and the sets
differ by more than that, so a goal such as "fidelity >= 0.9" is judged on the pooled figure.
Seed 10000 is `toy_model_quality.py`'s set; the model card says which sets informed choices.
Writes benchmarks/results/toy_model_fidelity__model-...__scheduler-...json, one file per configuration.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from results_io import result_path, write_result

from synthaug.generator import load_model
from synthaug.toy.evaluate import evaluate_toy_model, toy_prompts


def pooled(sets: list[tuple[float, int]]) -> tuple[float, int, float]:
    """(fidelity, objects, binomial standard error) over sets of (fidelity, objects)."""
    n = sum(k for _, k in sets)
    p = sum(f * k for f, k in sets) / n
    return p, n, math.sqrt(p * (1 - p) / n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[10_000, 20_000, 30_000, 40_000, 50_000])
    ap.add_argument("--num", type=int, default=200, help="prompts per set")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--scheduler", default=None, help="override the model folder's sampler, e.g. ddim")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=None, help="default: results/ named by model, sampler and sets")
    args = ap.parse_args()
    model = load_model(args.model, scheduler=args.scheduler)
    sampler = type(model.scheduler).__name__
    print(f"toy model {model.path}, {sampler} {args.steps} steps, guidance {args.guidance}, {args.num} prompts per set")
    t0 = time.perf_counter()
    per_set = {}
    for seed in args.seeds:
        ev = evaluate_toy_model(model, toy_prompts(args.num, seed=seed), steps=args.steps, guidance=args.guidance)
        per_set[seed] = (ev.fidelity, ev.objects)
        print(f"prompt seed {seed}: fidelity {ev.fidelity:.3f} over {ev.objects} objects", flush=True)
    p, n, se = pooled(list(per_set.values()))
    print(f"pooled: fidelity {p:.3f} over {n} objects (standard error {se:.3f})")
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "model": str(model.path),
        "scheduler": sampler,
        "steps": args.steps,
        "guidance": args.guidance,
        "prompts_per_set": args.num,
        "sets": {str(s): {"fidelity": round(f, 4), "objects": k} for s, (f, k) in per_set.items()},
        "pooled": {"fidelity": round(p, 4), "objects": n, "standard_error": round(se, 4)},
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    model_name = "shipped" if args.model is None else args.model
    out = args.out or result_path(
        "toy_model_fidelity", model=model_name, scheduler=sampler, steps=args.steps, guidance=args.guidance,
        sets=f"{len(args.seeds)}x{args.num}",
    )  # fmt: skip
    write_result(out, result)


if __name__ == "__main__":
    main()

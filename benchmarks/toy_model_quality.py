#!/usr/bin/env python3
"""Score the shipped toy model on 200 prompts: fidelity, and cross-attention mask mIoU against colour truth.

    python benchmarks/toy_model_quality.py [--num 200] [--steps 25] [--guidance 3]

All variants (which captured maps, which words) are scored on the same generated images in
one run, so their differences are not machine noise. Writes benchmarks/results/toy_model_quality.json.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from results_io import result_path, write_result

from synthaug.generator import load_model
from synthaug.toy.evaluate import cross_variant, evaluate_toy_model, toy_prompts
from synthaug.toy.world import TOY_VOCABULARY

ABLATION = {
    "f2 (16x16), shape word": ((2,), "shape"),
    "f2 (16x16), colour word": ((2,), "colour"),
    "f2 (16x16), both": ((2,), "both"),
    "f4 (8x8), both": ((4,), "both"),
    "f2+f4, both": ((2, 4), "both"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--threshold", default="0.5", help="a number in [0, 1] or 'otsu'")
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=None, help="default: results/ named by model and sampling")
    args = ap.parse_args()
    threshold = args.threshold if args.threshold == "otsu" else float(args.threshold)
    model = load_model(args.model)
    t0 = time.perf_counter()
    variants = {name: cross_variant(fs, words, threshold) for name, (fs, words) in ABLATION.items()}
    ev = evaluate_toy_model(
        model, toy_prompts(args.num, seed=10_000), steps=args.steps, guidance=args.guidance, variants=variants
    )
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "model": str(model.path),
        "prompts": args.num,
        "scheduler": type(model.scheduler).__name__,
        "steps": args.steps,
        "guidance": args.guidance,
        "threshold": threshold,
        "fidelity_colour_and_shape": round(ev.fidelity, 3),
        "fidelity_colour": round(ev.colour_fidelity, 3),
        "fidelity_by_shape": {k: round(v, 3) for k, v in ev.fidelity_by_shape.items()},
        "colour_correct_objects_seen_as": ev.shape_confusion,
        "miou": {k: round(v, 3) for k, v in ev.miou.items()},
        "per_class_iou": {k: dict(zip(TOY_VOCABULARY.names, v)) for k, v in ev.per_class_iou.items()},
        "seconds_per_image": round(ev.seconds_per_image, 3),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    out = args.out or result_path(
        "toy_model_quality", model="shipped" if args.model is None else args.model,
        scheduler=type(model.scheduler).__name__, steps=args.steps, guidance=args.guidance, prompts=args.num,
        threshold=args.threshold,
    )  # fmt: skip
    write_result(out, result)
    print(
        f"toy model, {args.num} prompts, {type(model.scheduler).__name__} {args.steps} steps, guidance {args.guidance}, threshold {threshold}"
    )
    print(f"fidelity (colour and shape): {ev.fidelity:.3f}   colour only: {ev.colour_fidelity:.3f}")
    print("by prompted shape:", {k: round(v, 3) for k, v in ev.fidelity_by_shape.items()})
    print("colour-correct objects seen as:", ev.shape_confusion)
    print(f"{'cross-attention masks from':<26} mIoU   " + "  ".join(f"{n:>8}" for n in TOY_VOCABULARY.names))
    for name, miou in ev.miou.items():
        per = "  ".join(f"{v:8.3f}" for v in ev.per_class_iou[name])
        print(f"{name:<26} {miou:.3f}  {per}")
    print(f"{ev.seconds_per_image:.3f} s per image with capture; wall {result['wall_seconds']} s")


if __name__ == "__main__":
    main()

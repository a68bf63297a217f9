#!/usr/bin/env python3
"""Annotators side by side on the same generated toy images: mIoU against colour truth, and cost.

    python benchmarks/annotators_toy.py [--num 96] [--refine-size 512]

Every variant annotates the same images from one captured generation, so the differences are
the annotators', not the machine's. The refinement comparison (torch edge-aware vs DenseCRF)
reports the IoU gain each gives over the unrefined masks, and their time at the toy size and at
`--refine-size` (maps and image upsampled, as for a 512x512 Stable Diffusion image).
Writes benchmarks/results/annotators_toy.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from synthaug.annotators import build_annotator
from synthaug.annotators.refine import refine
from synthaug.generator import load_model
from synthaug.toy.evaluate import Variant, evaluate_toy_model, toy_prompts
from synthaug.toy.world import TOY_VOCABULARY


def variants(with_crf: bool) -> dict[str, Variant]:
    cross = build_annotator("cross_attention", {"factors": [1, 2]})
    out = {
        "cross_attention (f1+f2, t=0.5)": Variant(cross),
        "cross_attention, otsu": Variant(build_annotator("cross_attention", {"factors": [1, 2], "threshold": "otsu"})),
        "cross_attention + edge": Variant(cross, refine="edge"),
        "self_refined (cross f2, self f1)": Variant(
            build_annotator("self_refined", {"cross_factors": [2], "self_factor": 1})
        ),
        "self_refined (cross f2, self f2)": Variant(
            build_annotator("self_refined", {"cross_factors": [2], "self_factor": 2})
        ),
        "self_refined (cross f1+f2, self f1)": Variant(
            build_annotator("self_refined", {"cross_factors": [1, 2], "self_factor": 1})
        ),
    }
    if with_crf:
        out["cross_attention + DenseCRF"] = Variant(cross, refine="crf")
    return out


def refine_timing(size: int, repeats: int, with_crf: bool) -> dict[str, float]:
    """Seconds per image for edge (torch) and DenseCRF refinement of 3 object maps at size x size."""
    rng = np.random.default_rng(0)
    img = np.array(Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).resize((size, size)))
    maps = F.interpolate(torch.rand(1, 3, 8, 8), size=(size, size), mode="bilinear")[0]
    out = {}
    for method in ("edge", "crf") if with_crf else ("edge",):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            refine(maps, img, method)
            times.append(time.perf_counter() - t0)
        out[method] = statistics.median(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num", type=int, default=96)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--refine-size", type=int, default=512)
    args = ap.parse_args()
    try:
        import pydensecrf.densecrf  # noqa: F401

        with_crf = True
    except ImportError:
        with_crf = False
        print("pydensecrf2 is not installed: DenseCRF rows are left out (pip install 'synthaug[crf]')")
    model = load_model()
    vs = variants(with_crf)
    ev = evaluate_toy_model(model, toy_prompts(args.num, seed=20_000), steps=args.steps, variants=vs)
    base = ev.miou["cross_attention (f1+f2, t=0.5)"]
    rows = {
        name: {
            "miou": round(ev.miou[name], 3),
            "per_class": dict(zip(TOY_VOCABULARY.names, ev.per_class_iou[name])),
            "annotate_ms_per_image": round(1000 * ev.annotate_seconds_per_image[name], 2),
        }
        for name in vs
    }
    timing_toy = refine_timing(32, 5, with_crf)
    timing_big = refine_timing(args.refine_size, 3, with_crf)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "images": args.num,
        "steps": args.steps,
        "generation_s_per_image": round(ev.seconds_per_image, 3),
        "annotators": rows,
        "refine_s_per_image_32": {k: round(v, 5) for k, v in timing_toy.items()},
        f"refine_s_per_image_{args.refine_size}": {k: round(v, 4) for k, v in timing_big.items()},
    }
    if with_crf:
        result["edge_vs_crf"] = {
            "iou_gain_edge": round(ev.miou["cross_attention + edge"] - base, 3),
            "iou_gain_crf": round(ev.miou["cross_attention + DenseCRF"] - base, 3),
            "time_ratio_crf_over_edge_32": round(timing_toy["crf"] / timing_toy["edge"], 2),
            f"time_ratio_crf_over_edge_{args.refine_size}": round(timing_big["crf"] / timing_big["edge"], 2),
        }
    print(f"{args.num} toy images, DDIM {args.steps} steps; mIoU against colour truth (ignore pixels left out)")
    print(f"{'annotator':<40} {'mIoU':>6} {'ms/img':>8}   " + " ".join(f"{n:>10}" for n in TOY_VOCABULARY.names))
    for name, r in rows.items():
        per = " ".join(f"{v:10.3f}" for v in r["per_class"].values())
        print(f"{name:<40} {r['miou']:6.3f} {r['annotate_ms_per_image']:8.2f}   {per}")
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("refine", "edge"))}, indent=2))
    out = Path(__file__).parent / "results" / "annotators_toy.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Annotators side by side on the same generated toy images: mIoU against colour truth, and cost.

    python benchmarks/annotators_toy.py [--num 96] [--refine-size 512]

Every variant annotates the same images from one captured generation, so the differences are
the annotators', not the machine's. The refinement comparison (torch edge-aware vs DenseCRF)
reports the IoU gain each gives over the unrefined masks, and their time at the toy size and at
`--refine-size` (toy scenes drawn at 512x512 with 16x16 stand-in attention maps, scored
against their exact masks, as for a Stable Diffusion image).
Writes benchmarks/results/annotators_toy.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from results_io import result_path, write_result

from synthaug.annotators import build_annotator
from synthaug.annotators.refine import refine
from synthaug.generator import load_model
from synthaug.toy.evaluate import ToyEvaluation, Variant, evaluate_toy_model, toy_prompts
from synthaug.toy.world import TOY_VOCABULARY, render_seed


def has_densecrf() -> bool:
    """True if pydensecrf2 imports, so the DenseCRF rows can be measured (it is the optional extra 'crf')."""
    try:
        import pydensecrf.densecrf  # noqa: F401
    except ImportError:
        return False
    return True


def variants(with_crf: bool) -> dict[str, Variant]:
    cross = build_annotator("cross_attention", {"factors": [2]})
    out = {
        "cross_attention (f2, t=0.5)": Variant(cross),
        "cross_attention, otsu": Variant(build_annotator("cross_attention", {"factors": [2], "threshold": "otsu"})),
        "cross_attention + edge": Variant(cross, refine="edge"),
        "self_refined (cross f2, self f2)": Variant(
            build_annotator("self_refined", {"cross_factors": [2], "self_factor": 2})
        ),
        "self_refined (cross f2, self f4)": Variant(
            build_annotator("self_refined", {"cross_factors": [2], "self_factor": 4})
        ),
    }
    if with_crf:
        out["cross_attention + DenseCRF"] = Variant(cross, refine="crf")
    return out


def refine_at_size(size: int, scenes: int, coarse: int = 16) -> dict[str, dict[str, float]]:
    """IoU and seconds per image of each refinement of coarse object maps at size x size.

    Toy scenes rendered at `size` stand in for Stable Diffusion images; each object's exact mask,
    area-averaged to `coarse` x `coarse` and upsampled bilinearly, stands in for its attention map
    (SD's 16x16 cross-attention). IoU is per object, against its exact mask, averaged.
    """
    methods = {
        "none": ("none", {}),
        "edge (work 64)": ("edge", {"work_size": 64}),
        "edge (work 128)": ("edge", {"work_size": 128}),
    }
    if has_densecrf():
        methods["DenseCRF"] = ("crf", {})
    ious: dict[str, list[float]] = {m: [] for m in methods}
    times: dict[str, list[float]] = {m: [] for m in methods}
    for seed in range(scenes):
        r = render_seed(seed, size)
        truth = torch.from_numpy(r.instances).float()[None]
        maps = F.interpolate(F.adaptive_avg_pool2d(truth, coarse), size=(size, size), mode="bilinear")[0]
        maps = maps / maps.flatten(1).amax(1).clamp_min(1e-6)[:, None, None]
        for name, (method, params) in methods.items():
            t0 = time.perf_counter()
            out = refine(maps, r.image, method, **params)
            times[name].append(time.perf_counter() - t0)
            best = torch.cat([0.5 * torch.ones(1, size, size), out]).argmax(0) - 1  # object index, -1 = none
            for i, m in enumerate(r.instances):
                if m.any():
                    pred = (best == i).numpy()
                    ious[name].append(float((pred & m).sum() / (pred | m).sum()))
    return {
        name: {"iou": round(statistics.mean(ious[name]), 3), "s_per_image": round(statistics.median(times[name]), 4)}
        for name in methods
    }


def parse_args() -> argparse.Namespace:
    """The command line: images to generate, sampler steps, and the size and count of the refinement test."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num", type=int, default=96)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--refine-size", type=int, default=512)
    ap.add_argument("--refine-scenes", type=int, default=24)
    return ap.parse_args()


def annotator_rows(ev: ToyEvaluation, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per annotator: mIoU (ignore left out and counted wrong), ignore share, per-class IoU and cost per image."""
    return {name: ev.row(name) for name in names}


def edge_vs_crf(
    ev: ToyEvaluation, rows: dict[str, dict[str, Any]], at_size: dict[str, dict[str, float]], size: int
) -> dict[str, float]:
    """Edge-aware refinement against DenseCRF: IoU gain over unrefined masks and time, at the toy size and at `size`."""
    base = ev.miou["cross_attention (f2, t=0.5)"]
    edge = at_size["edge (work 64)"]
    return {
        "toy_iou_gain_edge": round(ev.miou["cross_attention + edge"] - base, 3),
        "toy_iou_gain_crf": round(ev.miou["cross_attention + DenseCRF"] - base, 3),
        "toy_ms_edge": rows["cross_attention + edge"]["annotate_ms_per_image"],
        "toy_ms_crf": rows["cross_attention + DenseCRF"]["annotate_ms_per_image"],
        f"iou_gain_edge_{size}": round(edge["iou"] - at_size["none"]["iou"], 3),
        f"iou_gain_crf_{size}": round(at_size["DenseCRF"]["iou"] - at_size["none"]["iou"], 3),
        f"time_ratio_crf_over_edge_{size}": round(at_size["DenseCRF"]["s_per_image"] / edge["s_per_image"], 2),
    }


def print_table(num: int, scheduler: str, steps: int, rows: dict[str, dict[str, Any]]) -> None:
    """Print one line per annotator: mIoU, mIoU with ignore counted wrong, ignore share, ms per image, per class."""
    print(f"{num} toy images, {scheduler} {steps} steps; mIoU against colour truth (ignore pixels left out)")
    print(
        f"{'annotator':<40} {'mIoU':>6} {'ign=wrong':>9} {'ignore':>7} {'ms/img':>8}   "
        + " ".join(f"{n:>10}" for n in TOY_VOCABULARY.names)
    )
    for name, r in rows.items():
        per = " ".join(f"{v:10.3f}" for v in r["per_class"].values())
        print(
            f"{name:<40} {r['miou']:6.3f} {r['miou_ignore_wrong']:9.3f} {r['ignore_share']:7.4f} "
            f"{r['annotate_ms_per_image']:8.2f}   {per}"
        )


def main() -> None:
    """Score every annotator on the same generated images, time refinement at --refine-size, print and save."""
    args = parse_args()
    with_crf = has_densecrf()
    if not with_crf:
        print("pydensecrf2 is not installed: DenseCRF rows are left out (pip install 'synthaug[crf]')")
    model = load_model()
    vs = variants(with_crf)
    ev = evaluate_toy_model(model, toy_prompts(args.num, seed=20_000), steps=args.steps, variants=vs)
    rows = annotator_rows(ev, vs)
    at_size = refine_at_size(args.refine_size, args.refine_scenes)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "images": args.num,
        "scheduler": type(model.scheduler).__name__,
        "steps": args.steps,
        "generation_s_per_image": round(ev.seconds_per_image, 3),
        "annotators": rows,
        f"refine_at_{args.refine_size}": at_size,
    }
    if with_crf:
        result["edge_vs_crf"] = edge_vs_crf(ev, rows, at_size, args.refine_size)
    print_table(args.num, type(model.scheduler).__name__, args.steps, rows)
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("refine", "edge"))}, indent=2))
    write_result(result_path("annotators_toy", images=args.num, steps=args.steps, refine_size=args.refine_size), result)


if __name__ == "__main__":
    main()

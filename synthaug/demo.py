"""The README's main job on the built-in toy model: generate, annotate from attention, score, store, mix, show.

It generates toy-world prompts with the shipped model, turns captured cross-attention into
masks (raw, and refined by the edge-aware refinement), scores images and masks against the
colour truth, writes the refined samples into a store with an HTML gallery, serves one epoch of
a SyntheticMixDataset over a few real toy images and that store, prints a table, and writes a
contact sheet (image | mask | colour truth per sample) and a JSON report.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

from synthaug.annotators.instances import instances_from_mask
from synthaug.gallery import write_gallery
from synthaug.generator import load_model
from synthaug.mix import SyntheticMixDataset
from synthaug.sample import Sample
from synthaug.store import StoreWriter, create_store
from synthaug.toy.dataset import write_toy_dataset
from synthaug.toy.evaluate import Variant, cross_variant, evaluate_toy_model, toy_prompts
from synthaug.toy.score import semantic_truth
from synthaug.toy.world import TOY_VOCABULARY, render_seed
from synthaug.visualize import colour_mask, contact_sheet

RECIPE = "cross-attention (16x16 maps, colour+shape words)"
REFINED = "cross-attention + edge refinement"
MIX_RATIO = 0.3


def run_demo(
    out: Path,
    num: int = 96,
    steps: int = 25,
    guidance: float = 3.0,
    model: str | None = None,
    seed: int = 1000,
    train: bool = True,
    n_real: int = 10,
    n_val: int = 100,
    train_iters: int = 600,
    report_path: Path | None = None,
) -> dict:
    """Run the demo into `out`; returns the report it also writes as report.json (or to `report_path`).

    With `train`, it then trains mmseg's tools/train.py on `n_real` real toy images (5% of the
    default toy training set), once alone and once mixed with the generated store, and scores
    both on `n_val` held-out real images.
    """
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[demo] loading model {model or 'toy (shipped)'}", flush=True)
    m = load_model(model)
    prompts = toy_prompts(num, seed=seed)
    print(f"[demo] generating {num} images ({steps} steps, guidance {guidance}) with attention capture", flush=True)
    raw = cross_variant((2,))
    variants = {RECIPE: raw, REFINED: Variant(raw.annotator, raw.words, refine="edge")}
    ev = evaluate_toy_model(m, prompts, steps=steps, guidance=guidance, variants=variants)
    store = write_store(out / "data" / "toy_store", m, prompts, ev.images, ev.masks[REFINED], steps, guidance)
    gallery = write_gallery(store, out / "gallery")
    print(f"[demo] {num} samples in store {store}; gallery {gallery}", flush=True)
    write_contact_sheet(out / "contact_sheet.png", prompts, ev.images, ev.masks[REFINED])
    report = {
        "model": str(m.path),
        "images": num,
        "steps": steps,
        "guidance": guidance,
        "fidelity_colour_and_shape": round(ev.fidelity, 3),
        "fidelity_colour": round(ev.colour_fidelity, 3),
        "mask_miou_vs_colour_truth": round(ev.miou[RECIPE], 3),
        "refined_miou_vs_colour_truth": round(ev.miou[REFINED], 3),
        "per_class_iou": {n: round(v, 3) for n, v in zip(TOY_VOCABULARY.names, ev.per_class_iou[REFINED])},
        "mix_epoch": serve_one_epoch(store),
        "seconds_per_image": round(ev.seconds_per_image, 3),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    print_table(report)
    if train:
        report["training"] = train_and_compare(out, n_real, n_val, train_iters)
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[demo] total wall time {report['wall_seconds']} s", flush=True)
    report_path = report_path or out / "report.json"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"[demo] report: {report_path}; contact sheet (image | refined mask | colour truth): {out / 'contact_sheet.png'}"
    )
    return report


def write_contact_sheet(path: Path, prompts, images, masks) -> None:
    """Each image beside its refined mask and its colour truth, 12 tiles a row."""
    tiles = []
    for p, img, mask in zip(prompts, images, masks):
        tiles += [
            img,
            colour_mask(mask, TOY_VOCABULARY.palette),
            colour_mask(semantic_truth(img, p.objects), TOY_VOCABULARY.palette),
        ]
    Image.fromarray(contact_sheet(tiles, columns=12, scale=3)).save(path)


def train_and_compare(out: Path, n_real: int, n_val: int, iters: int) -> dict:
    """mmseg's tools/train.py on `n_real` real toy images, alone and mixed with the demo's store; both scored."""
    from synthaug.demo_training import compare, format_comparison

    for old in (out / "data" / "toy", out / "work_dirs"):
        shutil.rmtree(old, ignore_errors=True)
    write_toy_dataset(out / "data" / "toy", {"train": n_real, "val": n_val})
    results = compare(out, iters=iters)
    print(format_comparison(results, n_real, n_val), flush=True)
    print(
        f"[demo] a smoke run: one seed of each arm, {iters} iterations, at which the real-only model is not fully "
        "trained, and single runs differ by about 3 mIoU. Whether synthetic data helps at each label budget, with "
        "several seeds and error bars, is measured by benchmarks/evidence.py (README: 'Does it help?').",
        flush=True,
    )
    return {
        r.name: {
            "miou": r.miou,
            "per_class_iou": r.per_class,
            "images_seen": r.images_seen,
            "synthetic_served": r.synthetic_served,
            "wall_s": round(r.wall_s, 1),
        }
        for r in results
    }


def write_store(path: Path, model, prompts, images, masks, steps: int, guidance: float) -> Path:
    """The demo's annotated samples as a store (instances from the masks), as `synthaug generate` writes them."""
    if path.exists():
        shutil.rmtree(path)
    create_store(path, TOY_VOCABULARY)
    fingerprint = {**model.fingerprint(), "steps": steps, "guidance": guidance, "annotator": REFINED}
    with StoreWriter(path, "demo", fsync=False) as writer:
        for p, img, mask in zip(prompts, images, masks):
            writer.add(Sample(img, mask, instances_from_mask(mask, 0.01), p.caption, p.seed, fingerprint=fingerprint))
    return path


def serve_one_epoch(store: Path, n_real: int = 20) -> dict:
    """One epoch of a SyntheticMixDataset over `n_real` real toy images and the store; its counters."""
    real = [render_seed(900_000 + i, 32).to_sample() for i in range(n_real)]
    mix = SyntheticMixDataset(real, store, ratio=MIX_RATIO, seed=0)
    for i in range(len(mix)):
        mix[i]
    c = mix.counters()
    print(
        f"[demo] mix at ratio {MIX_RATIO}: one epoch served {c['served_real']} real + "
        f"{c['served_synthetic']} synthetic samples (share {c['synthetic_share']:.3f}), pool {c['pool_size']}",
        flush=True,
    )
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in c.items()}


def print_table(report: dict) -> None:
    rows = [
        ("objects drawn in the right colour", report["fidelity_colour"]),
        ("... and the right shape", report["fidelity_colour_and_shape"]),
        ("attention-mask mIoU vs colour truth", report["mask_miou_vs_colour_truth"]),
        ("... with edge refinement", report["refined_miou_vs_colour_truth"]),
        *[(f"  IoU {name} (refined)", iou) for name, iou in report["per_class_iou"].items()],
        ("mix epoch: synthetic share served", report["mix_epoch"]["synthetic_share"]),
        ("seconds per image (CPU)", report["seconds_per_image"]),
        ("wall time, s", report["wall_seconds"]),
    ]
    width = max(len(r[0]) for r in rows)
    print("-" * (width + 12))
    for name, value in rows:
        shown = "n/a" if isinstance(value, float) and np.isnan(value) else value
        print(f"{name:<{width}}  {shown:>8}")
    print("-" * (width + 12))

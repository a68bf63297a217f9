#!/usr/bin/env python3
"""The learned decoder (DatasetDM) against the attention annotators, on the same generated toy images.

    python benchmarks/annotators_decoder.py [--labelled 20 50 100] [--num 96] [--iterations 600]

Decoders are trained on 20, 50 and 100 labelled toy renders (a fifth of each held out for
model selection), with the shipped toy model frozen. Then every annotator labels the same
generated images (the decoder captures its one step in a second pass over the same seeds,
which yields identical images), scored against the exact colour masks: on all images, and on
the faithful ones only (every object drawn in its colour and shape), where a label by
appearance and a label by prompt agree. Also the share of images whose instance count (min
area 1%) equals the number of prompted objects. Annotation cost is per image, in the same run.
Writes benchmarks/results/annotators_decoder.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from results_io import result_path, write_result

from synthaug.annotators import build_annotator
from synthaug.annotators.decoder_training import TrainOptions, read_labelled_folder, train_decoder
from synthaug.generator import DiffusionModel, load_model
from synthaug.toy.dataset import write_toy_dataset
from synthaug.toy.evaluate import ToyEvaluation, Variant, evaluate_toy_model, toy_prompts
from synthaug.toy.world import TOY_VOCABULARY


def parse_args() -> argparse.Namespace:
    """The command line: labelled set sizes, images to score, decoder iterations, sampler steps, output file."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labelled", type=int, nargs="+", default=[20, 50, 100])
    ap.add_argument("--num", type=int, default=96, help="generated images to score")
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--out", type=Path, default=None, help="default: results/ named by the run's settings")
    return ap.parse_args()


def attention_variants() -> dict[str, Variant]:
    """The attention annotators the decoders are compared with: cross-attention, with edge refinement, self-refined."""
    cross = build_annotator("cross_attention", {"factors": [2]})
    return {
        "cross_attention": Variant(cross),
        "cross_attention + edge": Variant(cross, refine="edge"),
        "self_refined (cross f2, self f2)": Variant(
            build_annotator("self_refined", {"cross_factors": [2], "self_factor": 2})
        ),
    }


def train_one_decoder(model: DiffusionModel, root: Path, n: int, iterations: int, path: Path) -> dict[str, Any]:
    """Train a decoder on the first `n` labelled renders under `root`, save it at `path`; its held-out score and cost."""
    data = read_labelled_folder(root / "img_dir/train", root / "ann_dir/train", 32, root / "inst_dir/train", limit=n)
    result = train_decoder(model, data, TOY_VOCABULARY, TrainOptions(iterations=iterations), out=path, progress=False)
    return {k: result.record[k] for k in ("heldout_miou", "best_iteration", "feature_seconds", "seconds")}


def decoder_variants(n: int, path: Path) -> dict[str, Variant]:
    """The decoder at `path` (trained on `n` renders) as annotator: classes from the decoder, from attention, + edge."""
    variants = {}
    for classes in ("decoder", "attention"):  # where the class of a pixel comes from
        ann = build_annotator("decoder", {"path": str(path), "classes": classes})
        variants[f"decoder, {n} labelled, classes from {classes}"] = Variant(ann)
    variants[f"decoder, {n} labelled, classes from attention + edge"] = Variant(
        build_annotator("decoder", {"path": str(path), "classes": "attention"}), refine="edge"
    )
    return variants


def train_decoders(
    model: DiffusionModel, labelled: list[int], iterations: int, tmp: Path
) -> tuple[dict[int, dict[str, Any]], dict[str, Variant]]:
    """Train one decoder per labelled set size in scratch folder `tmp`; their training records and annotator variants.

    The last decoder trained also gives the variant whose instances are split by the instance head.
    """
    root = tmp / "toy"
    write_toy_dataset(root, {"train": max(labelled)}, seed=7)
    training, variants = {}, {}
    for n in labelled:
        path = tmp / f"decoder_{n}.safetensors"
        training[n] = train_one_decoder(model, root, n, iterations, path)
        print(f"decoder on {n} labelled renders: {training[n]}", flush=True)
        variants.update(decoder_variants(n, path))
    split = build_annotator("decoder", {"path": str(path), "split_instances": True})
    variants[f"decoder, {n} labelled, + edge, instances split by the instance head"] = Variant(split, refine="edge")
    return training, variants


def annotator_rows(ev: ToyEvaluation, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Per annotator: mIoU (all images, ignore counted wrong, faithful images), per class, cost, instance counts."""
    return {
        name: {
            **ev.row(name),
            "miou_faithful": round(ev.miou_faithful.get(name, float("nan")), 3),
            "instance_count_match": round(ev.instance_count_match[name], 3),
        }
        for name in names
    }


def print_table(num: int, faithful: int, scheduler: str, steps: int, rows: dict[str, dict[str, Any]]) -> None:
    """Print one line per annotator: mIoU, mIoU on faithful images, share with the right instance count, ms per image."""
    width = max(len(n) for n in rows)
    print(f"\n{num} generated images ({faithful} faithful), {scheduler} {steps} steps")
    print(f"{'annotator':<{width}}  mIoU   faithful  instance count ok  ms/image")
    for name, r in rows.items():
        print(
            f"{name:<{width}}  {r['miou']:.3f}  {r['miou_faithful']:.3f}     {r['instance_count_match']:.3f}"
            f"              {r['annotate_ms_per_image']:.1f}"
        )


def main() -> None:
    """Train the decoders, score them and the attention annotators on the same generated images, save and print."""
    args = parse_args()
    torch.manual_seed(0)
    model = load_model()
    variants = attention_variants()
    with tempfile.TemporaryDirectory() as tmp:
        training, decoders = train_decoders(model, args.labelled, args.iterations, Path(tmp))
        variants.update(decoders)
        ev = evaluate_toy_model(model, toy_prompts(args.num, seed=20_000), steps=args.steps, variants=variants)
    rows = annotator_rows(ev, variants)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "images": args.num,
        "faithful_images": ev.faithful_images,
        "scheduler": type(model.scheduler).__name__,
        "steps": args.steps,
        "generation_s_per_image": round(ev.seconds_per_image, 3),
        "training": training,
        "annotators": rows,
    }
    out = args.out or result_path(
        "annotators_decoder", labelled=args.labelled, iterations=args.iterations, images=args.num, steps=args.steps
    )
    write_result(out, result)
    print_table(args.num, ev.faithful_images, type(model.scheduler).__name__, args.steps, rows)


if __name__ == "__main__":
    main()

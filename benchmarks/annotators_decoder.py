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
from pathlib import Path

import torch
from results_io import result_path, write_result

from synthaug.annotators import build_annotator
from synthaug.annotators.decoder_training import TrainOptions, read_labelled_folder, train_decoder
from synthaug.generator import load_model
from synthaug.toy.dataset import write_toy_dataset
from synthaug.toy.evaluate import Variant, evaluate_toy_model, toy_prompts
from synthaug.toy.world import TOY_VOCABULARY


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labelled", type=int, nargs="+", default=[20, 50, 100])
    ap.add_argument("--num", type=int, default=96, help="generated images to score")
    ap.add_argument("--iterations", type=int, default=600)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--out", type=Path, default=None, help="default: results/ named by the run's settings")
    args = ap.parse_args()
    torch.manual_seed(0)
    model = load_model()
    cross = build_annotator("cross_attention", {"factors": [2]})
    variants = {
        "cross_attention": Variant(cross),
        "cross_attention + edge": Variant(cross, refine="edge"),
        "self_refined (cross f2, self f2)": Variant(
            build_annotator("self_refined", {"cross_factors": [2], "self_factor": 2})
        ),
    }
    training = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "toy"
        write_toy_dataset(root, {"train": max(args.labelled)}, seed=7)
        for n in args.labelled:
            data = read_labelled_folder(
                root / "img_dir/train", root / "ann_dir/train", 32, root / "inst_dir/train", limit=n
            )
            path = Path(tmp) / f"decoder_{n}.safetensors"
            result = train_decoder(
                model, data, TOY_VOCABULARY, TrainOptions(iterations=args.iterations), out=path, progress=False
            )
            training[n] = {
                k: result.record[k] for k in ("heldout_miou", "best_iteration", "feature_seconds", "seconds")
            }
            print(f"decoder on {n} labelled renders: {training[n]}", flush=True)
            for classes in ("decoder", "attention"):  # where the class of a pixel comes from
                ann = build_annotator("decoder", {"path": str(path), "classes": classes})
                variants[f"decoder, {n} labelled, classes from {classes}"] = Variant(ann)
            variants[f"decoder, {n} labelled, classes from attention + edge"] = Variant(
                build_annotator("decoder", {"path": str(path), "classes": "attention"}), refine="edge"
            )
        split = build_annotator("decoder", {"path": str(path), "split_instances": True})
        variants[f"decoder, {n} labelled, + edge, instances split by the instance head"] = Variant(split, refine="edge")
        ev = evaluate_toy_model(model, toy_prompts(args.num, seed=20_000), steps=args.steps, variants=variants)
    rows = {
        name: {
            "miou": round(ev.miou[name], 3),
            "miou_ignore_wrong": round(ev.miou_ignore_wrong[name], 3),
            "ignore_share": round(ev.ignore_share[name], 4),
            "miou_faithful": round(ev.miou_faithful.get(name, float("nan")), 3),
            "per_class": dict(zip(TOY_VOCABULARY.names, ev.per_class_iou[name])),
            "annotate_ms_per_image": round(1000 * ev.annotate_seconds_per_image[name], 2),
            "instance_count_match": round(ev.instance_count_match[name], 3),
        }
        for name in variants
    }
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
    width = max(len(n) for n in rows)
    print(
        f"\n{args.num} generated images ({ev.faithful_images} faithful), {type(model.scheduler).__name__} {args.steps} steps"
    )
    print(f"{'annotator':<{width}}  mIoU   faithful  instance count ok  ms/image")
    for name, r in rows.items():
        print(
            f"{name:<{width}}  {r['miou']:.3f}  {r['miou_faithful']:.3f}     {r['instance_count_match']:.3f}"
            f"              {r['annotate_ms_per_image']:.1f}"
        )


if __name__ == "__main__":
    main()

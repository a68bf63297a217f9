#!/usr/bin/env python3
"""How well the loss filter finds planted label noise, with the class mean (FreeMask) or median as reference.

    python benchmarks/loss_filter_planted.py [--iters 400] [--samples 48] [--work DIR]

mmseg's tools/train.py trains the toy FCN on 200 real toy images for `--iters` iterations; a store of
`--samples` toy renders gets an 8x8 square of background painted 'circle' in each mask
(synthaug.toy.planted). The trained model's per-pixel loss on the store (synthaug's mmseg scorer) is
then thresholded per class at max(margin x reference, -ln p), with the class mean or median loss as
the reference, for several margins and label probability floors p (0.5, the first default, and 0.1, a
semantic model's default now). Reported: the share of planted pixels ignored (want high) and of
right pixels ignored (want low). Writes benchmarks/results/loss_filter_planted__iters-N__samples-M.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
from results_io import result_path, write_result

from synthaug.demo_training import CONFIG_DIR, train
from synthaug.scoring import FilterRule, class_medians, loss_histograms
from synthaug.store import SampleStore
from synthaug.toy.dataset import write_toy_dataset
from synthaug.toy.planted import write_planted_store

MARGINS = (1.0, 1.25, 1.5)
MIN_PROBABILITIES = (0.5, 0.1)


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--samples", type=int, default=48)
    ap.add_argument("--work", type=Path, default=Path("/tmp/synthaug_loss_filter"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    work = args.work.resolve()
    if not (work / "data" / "toy" / "dataset.json").exists():
        write_toy_dataset(work / "data" / "toy", {"train": 200, "val": 20})
    name = f"real_i{args.iters}"
    ckpt = work / "work_dirs" / name / f"iter_{args.iters}.pth"
    if not ckpt.exists():
        train(work, "toy_fcn_real.py", args.iters, 8, name, quiet=True)
    store = work / f"planted_{args.samples}"
    if store.exists():
        import shutil

        shutil.rmtree(store)
    planted = write_planted_store(store, args.samples)

    from synthaug.integrations.mmseg.scoring import MMSegLossModel

    model = MMSegLossModel(CONFIG_DIR / "toy_fcn_real.py", ckpt)
    st = SampleStore(store)
    records = list(st)
    samples = [st.read_record(r) for r in records]
    losses = np.concatenate([x.ravel() for x in model.pixel_loss(samples)])
    labels = np.concatenate([s.mask.ravel() for s in samples]).astype(np.int64)
    wrong = np.concatenate([planted[r["id"]].ravel() for r in records])
    n_cls = len(st.vocabulary.names)
    means = np.array([losses[labels == c].mean() if (labels == c).any() else np.inf for c in range(n_cls)])
    medians = class_medians(loss_histograms(labels, losses, n_cls))
    rows = []
    for reference, values, margin, p in (
        (r, v, m, p) for r, v in (("mean", means), ("median", medians)) for p in MIN_PROBABILITIES for m in MARGINS
    ):
        threshold = np.maximum(margin * values, FilterRule(margin=margin, min_probability=p).floor)
        ignored = losses > threshold[labels]
        rows.append(
            {
                "reference": reference,
                "margin": margin,
                "min_probability": p,
                "planted_ignored": round(float((ignored & wrong).sum() / wrong.sum()), 4),
                "right_ignored": round(float((ignored & ~wrong).sum() / (~wrong).sum()), 4),
            }
        )
        print(
            f"{reference:>6} x {margin:<4} p < {p:<4}: planted ignored {rows[-1]['planted_ignored']:.3f}, "
            f"right ignored {rows[-1]['right_ignored']:.3f}"
        )
    write_result(
        result_path("loss_filter_planted", iters=args.iters, samples=args.samples),
        {
            "what": "share of planted (wrong) and right pixels the loss filter ignores; threshold per class "
            "max(margin x reference, -ln min_probability); toy FCN trained on 200 real toy images",
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.node()} ({os.cpu_count()} cores)",
            "train_iterations": args.iters,
            "samples": args.samples,
            "planted_pixels": int(wrong.sum()),
            "right_pixels": int((~wrong).sum()),
            "class_mean_loss": dict(zip(st.vocabulary.names, np.round(means, 4).tolist())),
            "class_median_loss": dict(zip(st.vocabulary.names, np.round(medians, 4).tolist())),
            "rules": rows,
            "wall_s": round(time.perf_counter() - t0, 1),
        },
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""How well the detectron2 instance scorer (Mask R-CNN's mask loss per instance) finds planted instance noise.

    python benchmarks/loss_filter_planted_instances.py [--iters 300] [--samples 128] [--work DIR]

detectron2's tools/train_net.py (ours) trains the toy Mask R-CNN (configs/detectron2/toy_mask_rcnn_real.yaml,
base LR 0.01, seed 0) on 200 real toy images of 64 px for `--iters` iterations. Two stores of `--samples` toy
renders get a wrong first instance in every other render (synthaug.toy.planted.write_planted_instances):
its mask `moved` a quarter of the image off its object, or its class `relabelled` with the mask kept. Each
store is scored with the trained model at several margins, and the mix's view of the scores (an instance most
of whose pixels are ignored is dropped) gives the share of planted and of right instances dropped. Writes
benchmarks/results/loss_filter_planted_instances__iters-N__samples-M.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from results_io import result_path, write_result

from synthaug.scoring import FilterRule, Scores, score_store
from synthaug.toy.dataset import write_toy_dataset
from synthaug.toy.planted import PLANTED_INSTANCE_KINDS, planted_instance_verdicts, write_planted_instances

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "detectron2" / "toy_mask_rcnn_real.yaml"
MARGINS = (1.0, 1.25, 1.5)
CLASSES = ["circle", "square", "triangle"]


def train(work: Path, iters: int) -> Path:
    """The toy Mask R-CNN trained `iters` iterations on the work folder's toy data (kept between runs)."""
    out = work / "work_dirs" / f"real_i{iters}"
    if not (out / "model_final.pth").exists():
        cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(CONFIG)]
        cmd += ["SOLVER.MAX_ITER", str(iters), "SOLVER.BASE_LR", "0.01", "SEED", "0", "OUTPUT_DIR", str(out)]
        subprocess.run(cmd, cwd=work, check=True, stdout=subprocess.DEVNULL)
    return out / "model_final.pth"


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--work", type=Path, default=Path("/tmp/synthaug_loss_filter_instances"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    work = args.work.resolve()
    if not (work / "data" / "toy" / "dataset.json").exists():
        write_toy_dataset(work / "data" / "toy", {"train": 200, "val": 20}, size=64)
    ckpt = train(work, args.iters)

    from synthaug.integrations.detectron2.scoring import Detectron2LossModel

    os.chdir(work)  # the config registers data/toy/... relative to where training ran
    model = Detectron2LossModel(CONFIG, ckpt, classes=CLASSES)
    rows = []
    for kind in PLANTED_INSTANCE_KINDS:
        store = work / f"planted_{kind}_{args.samples}"
        shutil.rmtree(store, ignore_errors=True)
        planted = write_planted_instances(store, args.samples, kind)
        for margin in MARGINS:
            path = score_store(store, model, FilterRule(margin=margin), tag=f"m{margin}")
            caught, wrongly = planted_instance_verdicts(store, planted)
            header = Scores.read(path).header
            path.unlink()
            rows.append(
                {
                    "planted": kind,
                    "margin": margin,
                    "planted_instances": len(caught),
                    "right_instances": len(wrongly),
                    "planted_dropped": round(float(np.mean(caught)), 4),
                    "right_dropped": round(float(np.mean(wrongly)), 4),
                    "class_median_loss": header["class_median_loss"],
                    "class_threshold": header["class_threshold"],
                }
            )
            print(
                f"{kind:>10} x {margin:<4}: planted dropped {sum(caught)}/{len(caught)}, "
                f"right dropped {sum(wrongly)}/{len(wrongly)}",
                flush=True,
            )
    write_result(
        result_path("loss_filter_planted_instances", iters=args.iters, samples=args.samples),
        {
            "what": "share of planted (wrong) and right instances the mix drops after detectron2 scoring (Mask R-CNN's "
            "mask loss per instance; threshold per class max(margin x median, ln 2); an instance more than half "
            "ignored is dropped); toy Mask R-CNN trained on 200 real toy images of 64 px",
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.node()} ({os.cpu_count()} cores)",
            "train_iterations": args.iters,
            "samples": args.samples,
            "rules": rows,
            "wall_s": round(time.perf_counter() - t0, 1),
        },
    )


if __name__ == "__main__":
    main()

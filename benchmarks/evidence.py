#!/usr/bin/env python3
"""Does synthetic data help, and by how much? Every "does it help" figure in the README comes from here.

    python benchmarks/evidence.py [--quick] [--work DIR] [--iters 3000] [--seeds 0 1 2]
        [--budgets 5 25 100] [--arms real synthetic pretrain filtered filtered_hard] [--pool 1024]
    python benchmarks/evidence.py --curve      # real-only at 100%: mIoU against iterations
    python benchmarks/evidence.py --summary    # tables, targets and the plot from the runs made so far

mmseg's own tools/train.py trains the toy FCN (configs/mmseg) on a share (the label budget) of the
200-image toy training set and is scored on 200 held-out real toy images. The seed picks the real
subset and the trainer's seed. Arms, all with the same iterations and batch size:

- real: real images only (configs/mmseg/toy_fcn_real.py);
- synthetic: + the synthetic pool at ratio 0.5, as synthaug mixes today (toy_fcn_mix.py);
- pretrain: synthetic only for half the iterations, then real only (toy_fcn_synthetic_pretrain.py,
  then toy_fcn_real_finetune.py); the synthetic half does not depend on the budget and is shared;
- filtered: as synthetic, with pixels whose loss is abnormal for their class ignored (`synthaug score`,
  FreeMask's rule; see synthaug/scoring.py), under the final model of the same seed's synthetic run
  (`--scorer real`: its real-only run, FreeMask's offline route; `--scorer truth`: colour truth, the ceiling
  of any filter);
- filtered_hard: as filtered, with hard-but-clean samples drawn more often (policy 'hardness').

The synthetic pool is made once with the shipped toy model (`synthaug generate`, edge refinement) and
shared by every run; smaller pools are its first N samples. Each run writes its own JSON under
benchmarks/results/evidence_runs/ and is skipped when that exists, so the grid resumes where it
stopped. `--summary` (also run after every grid) writes benchmarks/results/evidence__<config>.json with
every run, mean and standard deviation per arm and budget, and the targets, and the PNG plot beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from results_io import RESULTS, result_path, write_result

from synthaug.demo_training import CONFIG_DIR, train, validation_curve
from synthaug.scoring import MAX_LOSS, SEMANTIC_MIN_PROBABILITY, FilterRule, score_store
from synthaug.toy.dataset import write_toy_dataset
from synthaug.toy.score import parse_caption, semantic_truth
from synthaug.toy.world import TOY_VOCABULARY

REPO = Path(__file__).resolve().parents[1]
RUNS = RESULTS / "evidence_runs"
TRAIN_IMAGES = 200
VAL_IMAGES = 200
BATCH = 8
BUDGETS = (5, 25, 100)
ARMS = ("real", "synthetic", "pretrain", "filtered", "filtered_hard")
SYNTHETIC_ARMS = ARMS[1:]
MIX_RATIO = 0.5
#: Whose model scores a filtered arm's pool: the mix's own model, the real-only one (FreeMask's offline route),
#: or colour truth ('truth': an oracle that ignores exactly the pixels whose label the image's colours contradict,
#: the most any filter could remove; a ceiling, not an arm users have).
SCORERS = ("synthetic", "real", "truth")
#: How the pool's masks are refined: edge (the grid's pool), or none (the raw attention masks: a noisier pool).
ANNOTATIONS = ("edge", "none")
#: The filter rule's floor as a label probability (synthaug.scoring): today's default for a softmax model, and
#: the one the first grid's filtered runs used (ln 2), kept apart in the tables.
MIN_PROBABILITY = SEMANTIC_MIN_PROBABILITY
LEGACY_MIN_PROBABILITY = 0.5


@dataclass(frozen=True)
class Run:
    """One training run of the grid: an arm at a label budget (percent), a seed, a schedule and a pool size."""

    arm: str
    budget: int
    seed: int
    iters: int
    pool: int
    scorer: str = "synthetic"  # filtered arms: whose model scores the pool (SCORERS)
    annotation: str = "edge"  # how the pool's masks were refined (ANNOTATIONS): edge, or none (noisier)
    min_probability: float = MIN_PROBABILITY  # filtered arms: the filter rule's label probability floor

    @property
    def filtered(self) -> bool:
        return self.arm.startswith("filtered")

    @property
    def name(self) -> str:
        pool = f"_p{self.pool}" if self.arm != "real" else ""
        if pool and self.annotation != "edge":
            pool += f"_a{self.annotation}"
        scorer = f"_by{self.scorer}{self.rule_suffix}" if self.filtered else ""
        return f"{self.arm}_b{self.budget}_s{self.seed}_i{self.iters}{pool}{scorer}"

    @property
    def rule_suffix(self) -> str:
        """The filter rule in names: none for the first grid's floor, so that its runs and pools keep theirs."""
        return "" if self.min_probability == LEGACY_MIN_PROBABILITY else f"_f{self.min_probability}"

    def scoring_twin(self) -> Run:
        """The run of the same budget, seed, schedule and pool whose final model scores a filtered arm's pool:
        'synthetic' (real + synthetic, as today: the model the live loop scores with, late in training) or
        'real' (real only, FreeMask's offline route). Colour truth has none."""
        if self.scorer == "truth":
            raise ValueError(f"{self.name}: colour truth scores the pool, not a model")
        return Run(self.scorer, self.budget, self.seed, self.iters, self.pool, annotation=self.annotation)

    def artefact(self, folder: Path) -> Path:
        """Its JSON; the keys a run of the first grid did not have are named only when they differ from it
        (pools refined by edge, the ln 2 floor), so that those artefacts keep their names."""
        config: dict = dict(arm=self.arm, budget=self.budget, seed=self.seed, iters=self.iters)
        if self.arm != "real":
            config["pool"] = self.pool
            if self.annotation != "edge":
                config["annotation"] = self.annotation
        if self.filtered:
            config["scorer"] = self.scorer
            if self.min_probability != LEGACY_MIN_PROBABILITY:
                config["min_probability"] = self.min_probability
        return folder / result_path("evidence", **config).name


class Workspace:
    """The benchmark's data on disk: the toy set, per-(budget, seed) subsets, the pool and its prefixes."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.full = self.root / "data" / "full"

    def pool(self, annotation: str = "edge") -> Path:
        """The shared pool whose masks were refined by `annotation` (edge: the grid's; none: the noisier one)."""
        return self.root / ("pool" if annotation == "edge" else f"pool_{annotation}")

    def toy_data(self) -> Path:
        if not (self.full / "dataset.json").exists():
            write_toy_dataset(self.full, {"train": TRAIN_IMAGES, "val": VAL_IMAGES})
        return self.full

    def subset(self, budget: int, seed: int) -> Path:
        """img_dir/ann_dir with `budget`% of the training images (chosen by `seed`) and every val image."""
        out = self.root / "data" / f"b{budget}_s{seed}"
        if (out / "done").exists():
            return out
        full = self.toy_data()
        names = sorted(p.name for p in (full / "img_dir" / "train").iterdir())
        n = round(len(names) * budget / 100)
        chosen = (
            sorted(np.random.default_rng([seed, 0xE51D]).choice(names, size=n, replace=False))
            if n < len(names)
            else names
        )
        val = sorted(p.name for p in (full / "img_dir" / "val").iterdir())
        for split, files in (("train", chosen), ("val", val)):
            for kind in ("img_dir", "ann_dir"):
                folder = out / kind / split
                folder.mkdir(parents=True, exist_ok=True)
                for f in files:
                    if not (folder / f).exists():
                        os.link(full / kind / split / f, folder / f)
        (out / "done").write_text(json.dumps({"train": list(chosen)}) + "\n")
        return out

    def ensure_pool(self, size: int, annotation: str = "edge") -> Path:
        """The shared pool, generated (or grown) to at least `size` samples by `synthaug generate`. The same
        seeds make the same images whatever the refinement, so the pools differ in their masks only."""
        pool = self.pool(annotation)
        have = count_records(pool)
        if have < size:
            config = self.root / f"generate_{annotation}.yaml"
            text = (REPO / "configs" / "generate" / "toy.yaml").read_text()
            text = text.replace("refine: none", f"refine: {annotation}").replace("seed: 0", f"seed: {have}")
            config.write_text(text)
            print(f"[evidence] generating {size - have} synthetic samples into {pool}", flush=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "synthaug.cli",
                    "generate",
                    "--config",
                    str(config),
                    "--out",
                    str(pool),
                    "--num",
                    str(size - have),
                ],
                check=True,
            )
        return pool

    def pool_prefix(self, size: int, annotation: str = "edge") -> Path:
        """A store of the pool's first `size` samples (files hard-linked), or the pool itself if it has no more."""
        pool = self.ensure_pool(size, annotation)
        if count_records(pool) == size:
            return pool
        out = self.root / "pools" / (f"n{size}" if annotation == "edge" else f"n{size}_{annotation}")
        if count_records(out) == size:
            return out
        shutil.rmtree(out, ignore_errors=True)
        (out / "segments").mkdir(parents=True)
        shutil.copy(pool / "store.json", out / "store.json")
        left = size
        for seg in sorted((pool / "segments").iterdir()):
            lines = (seg / "manifest.jsonl").read_bytes().splitlines(keepends=True)
            take = [ln for ln in lines if ln.endswith(b"\n")][:left]
            if not take:
                continue
            (out / "segments" / seg.name / "samples").mkdir(parents=True)
            for ln in take:
                rec = json.loads(ln)
                for key in ("image", "mask"):
                    os.link(pool / rec[key], out / rec[key])
            (out / "segments" / seg.name / "manifest.jsonl").write_bytes(b"".join(take))
            left -= len(take)
            if left == 0:
                break
        return out

    def scored_pool(self, size: int, run: Run, folder: Path) -> Path:
        """A copy (hard links) of the pool's first `size` samples, scored by the model of `run`'s scoring twin
        (or by colour truth, the same for every budget and seed).

        Each (budget, seed, scorer, pool, rule) gets its own copy because a store's mix reads the newest scores in it."""
        if run.scorer == "truth":
            return self.truth_scored_pool(size, run)
        twin = run.scoring_twin()
        # the real-only twin's name holds no pool: the pool's refinement goes in the folder's name
        pool = f"_a{run.annotation}" if run.annotation != "edge" and twin.arm == "real" else ""
        out = self.root / "pools" / f"n{size}_scored_by_{twin.name}{pool}{run.rule_suffix}"
        if self.has_scores(out):
            return out
        ckpt = self.root / "runs" / twin.name / "work_dirs" / twin.name / f"iter_{twin.iters}.pth"
        if not ckpt.exists():
            run_grid(self, [twin], folder, force=True)
        self.fresh_copy(out, size, run.annotation)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "synthaug.cli",
                "score",
                str(out),
                "--framework",
                "mmseg",
                "--config",
                str(CONFIG_DIR / "toy_fcn_real.py"),
                "--checkpoint",
                str(ckpt),
                "--tag",
                twin.name,
                "--min-probability",
                str(run.min_probability),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return out

    @staticmethod
    def has_scores(store: Path) -> bool:
        """Whether a scored copy was scored (its scores file written): it is then kept as it is."""
        return (store / "scores").is_dir() and any(not n.startswith(".") for n in os.listdir(store / "scores"))

    def fresh_copy(self, out: Path, size: int, annotation: str) -> None:
        """`out` made afresh: a copy (hard links) of the pool's first `size` samples, without scores or lock."""
        shutil.rmtree(out, ignore_errors=True)
        src = self.pool_prefix(size, annotation)
        shutil.copytree(src, out, copy_function=os.link, ignore=shutil.ignore_patterns("writer.lock", "scores"))

    def truth_scored_pool(self, size: int, run: Run) -> Path:
        """The pool's first `size` samples scored by colour truth (ColourTruthLoss) under `run`'s rule."""
        pool = f"_a{run.annotation}" if run.annotation != "edge" else ""
        out = self.root / "pools" / f"n{size}_scored_by_truth{pool}{run.rule_suffix}"
        if self.has_scores(out):
            return out
        self.fresh_copy(out, size, run.annotation)
        rule = FilterRule(min_probability=run.min_probability)
        header = json.loads(score_store(out, ColourTruthLoss(), rule, tag="colour-truth").open().readline())
        # A class at least half of whose pixels are wrong has its median (so its threshold) at MAX_LOSS: then
        # nothing of it is ignored, and this would be no ceiling.
        unfit = {c: t for c, t in header["class_threshold"].items() if t is not None and not t < MAX_LOSS}
        if unfit:
            shutil.rmtree(out)
            raise SystemExit(f"colour truth contradicts half or more of classes {unfit}'s pixels: no ceiling there")
        return out

    def pool_folders(self, size: int) -> Path:
        """The pool prefix exported as mmseg folders (img_dir/ann_dir/train), for synthetic pre-training."""
        out = self.root / "synthetic_mmseg" / f"n{size}"
        if not (out / "done").exists():
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "synthaug.cli",
                    "export",
                    "--format",
                    "mmseg",
                    str(self.pool_prefix(size)),
                    str(out),
                ],
                check=True,
            )
            (out / "done").write_text("")
        return out

    def run_dir(self, name: str, budget: int, seed: int) -> Path:
        """The working directory of one run: data/toy is its budget's subset (configs read data/toy)."""
        cwd = self.root / "runs" / name
        (cwd / "data").mkdir(parents=True, exist_ok=True)
        link = cwd / "data" / "toy"
        if not link.exists():
            link.symlink_to(self.subset(budget, seed), target_is_directory=True)
        return cwd


def count_records(store: Path) -> int:
    """Complete manifest lines in `store` (0 if it does not exist)."""
    segments = store / "segments"
    if not segments.is_dir():
        return 0
    return sum(
        (seg / "manifest.jsonl").read_bytes().count(b"\n")
        for seg in segments.iterdir()
        if (seg / "manifest.jsonl").exists()
    )


class ColourTruthLoss:
    """A LossModel (synthaug.scoring) that knows the answer: loss 0 where a pixel's label agrees with colour
    truth (synthaug.toy.score: the toy image's colours name each object's shape), MAX_LOSS where it does not.
    While under half of each class's pixels are wrong (checked by the caller), any rule's class median is ~0 and
    the rule ignores exactly the contradicted pixels. Colour truth is itself unsure at anti-aliased edges, so this
    is the ceiling of filtering by labels, give or take those. Its classes are the toy vocabulary's, in the ids
    colour truth gives; the scorer matches the store's to them by name."""

    task = "sem_seg"
    name = "colour truth"
    classes = TOY_VOCABULARY.names

    def pixel_loss(self, samples: list) -> list[np.ndarray]:
        out = []
        for sample in samples:
            truth = semantic_truth(sample.image, parse_caption(sample.prompt))
            out.append(np.where(sample.mask != truth, MAX_LOSS, 0.0).astype(np.float32))
        return out


def seed_options(seed: int) -> list[str]:
    return [f"randomness.seed={seed}"]


def run_one(ws: Workspace, run: Run, folder: Path) -> dict:
    """Train one run (two for pretrain) with mmseg's tools/train.py; the artefact it writes."""
    t0 = time.perf_counter()
    cwd = ws.run_dir(run.name, run.budget, run.seed)
    store_opts = []
    if run.arm != "real":
        store_opts = [
            f"train_dataloader.dataset.store={ws.pool_prefix(run.pool, run.annotation)}",
            f"train_dataloader.dataset.seed={run.seed}",
        ]
    extra: dict = {}
    if run.arm == "real":
        result = train(cwd, "toy_fcn_real.py", run.iters, BATCH, run.name, seed_options(run.seed), quiet=True)
    elif run.arm == "synthetic":
        result = train(
            cwd, "toy_fcn_mix.py", run.iters, BATCH, run.name, seed_options(run.seed) + store_opts, quiet=True
        )
    elif run.arm == "pretrain":
        half = run.iters // 2
        ckpt = pretrained(ws, run.seed, half, run.pool)
        result = train(
            cwd,
            "toy_fcn_real_finetune.py",
            run.iters - half,
            BATCH,
            run.name,
            [*seed_options(run.seed), f"load_from={ckpt}"],
            quiet=True,
        )
        extra["pretrain_checkpoint"] = str(ckpt.relative_to(ws.root))
    else:  # filtered, filtered_hard: the pool scored by the scoring twin's model
        scored = ws.scored_pool(run.pool, run, folder)
        filter_opts = [
            f"train_dataloader.dataset.store={scored}",
            f"train_dataloader.dataset.seed={run.seed}",
            "train_dataloader.dataset.loss_filter=True",
        ]
        if run.arm == "filtered_hard":
            filter_opts.append("train_dataloader.dataset.policy=hardness")
        result = train(
            cwd, "toy_fcn_mix.py", run.iters, BATCH, run.name, seed_options(run.seed) + filter_opts, quiet=True
        )
        extra["scorer"] = run.scorer
        extra["scored_by"] = "colour truth" if run.scorer == "truth" else run.scoring_twin().name
        extra["min_probability"] = run.min_probability
        extra["filtered_out"] = result.scalars.get("synthaug_filtered_out")
        extra["ignored_share"] = result.scalars.get("synthaug_ignored_share")
    return {
        "arm": run.arm,
        "budget_percent": run.budget,
        "real_images": round(TRAIN_IMAGES * run.budget / 100),
        "seed": run.seed,
        "iterations": run.iters,
        "batch_size": BATCH,
        "pool": run.pool if run.arm != "real" else 0,
        **({"annotation": run.annotation} if run.arm != "real" else {}),
        "miou": result.miou,
        "per_class_iou": result.per_class,
        "synthetic_served": result.synthetic_served,
        "wall_s": round(time.perf_counter() - t0, 1),
        **extra,
    }


def pretrained(ws: Workspace, seed: int, iters: int, pool: int) -> Path:
    """The synthetic-only model of `seed` after `iters` iterations (trained once, shared by every budget)."""
    name = f"pretrain_synthetic_s{seed}_i{iters}_p{pool}"
    cwd = ws.run_dir(name, 100, seed)  # data/toy supplies the val images only
    ckpt = cwd / "work_dirs" / name / f"iter_{iters}.pth"
    if not ckpt.exists():
        folders = ws.pool_folders(pool)
        train(
            cwd,
            "toy_fcn_synthetic_pretrain.py",
            iters,
            BATCH,
            name,
            [*seed_options(seed), f"train_dataloader.dataset.data_root={folders}"],
            quiet=True,
        )
    return ckpt


def curve(ws: Workspace, iters: int, every: int, seed: int) -> Path:
    """Real only at 100%, validated every `every` iterations: where its mIoU stops improving."""
    name = f"curve_real_b100_s{seed}_i{iters}"
    cwd = ws.run_dir(name, 100, seed)
    t0 = time.perf_counter()
    result = train(cwd, "toy_fcn_real.py", iters, BATCH, name, seed_options(seed), val_interval=every, quiet=True)
    assert result.log is not None
    points = validation_curve(result.log.read_text(), every)
    out = result_path("evidence_curve", arm="real", budget=100, seed=seed, iters=iters, every=every)
    return write_result(
        out,
        {
            "what": "real-only toy FCN on 100% of the toy training set, mIoU on 200 held-out real images after each "
            "validation (the poly learning rate decays to its floor at the last iteration)",
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.node()} ({os.cpu_count()} cores)",
            "batch_size": BATCH,
            "curve": [{"iteration": i, "miou": m} for i, m in points],
            "wall_s": round(time.perf_counter() - t0, 1),
        },
    )


def grid(args: argparse.Namespace) -> list[Run]:
    if args.scaling is not None:  # the pool-size curve: its arms and budgets, every pool size asked for
        return [
            Run(arm, budget, seed, args.iters, pool, min_probability=args.min_probability)
            for seed in args.seeds
            for pool in args.scaling or SCALING_POOLS
            for budget in SCALING_BUDGETS
            for arm in SCALING_ARMS
        ]
    if args.scorer == "truth" and "filtered_hard" in args.arms:
        raise SystemExit(
            "--scorer truth: colour truth gives every kept pixel loss 0, so no sample is harder than another; "
            "measure the ceiling with --arms filtered"
        )
    if args.annotation != "edge" and "pretrain" in args.arms:
        raise SystemExit(
            f"--annotation {args.annotation}: pre-training is measured on the edge pool only; leave it out of --arms"
        )
    return [
        Run(arm, budget, seed, args.iters, args.pool, args.scorer, args.annotation, args.min_probability)
        for seed in args.seeds
        for budget in args.budgets
        for arm in args.arms
    ]


def run_grid(ws: Workspace, runs: list[Run], folder: Path, force: bool = False) -> None:
    """Train every run whose artefact is missing (with `force`, every run: to remake a deleted checkpoint)."""
    todo = [r for r in runs if force or not r.artefact(folder).exists()]
    print(f"[evidence] {len(runs) - len(todo)} of {len(runs)} runs already done; {len(todo)} to go", flush=True)
    for k, run in enumerate(todo, 1):
        print(f"[evidence] {k}/{len(todo)}: {run.name}", flush=True)
        record = run_one(ws, run, folder)
        record["date"] = time.strftime("%Y-%m-%d")
        record["machine"] = f"{platform.node()} ({os.cpu_count()} cores)"
        write_result(run.artefact(folder), record)
        print(f"[evidence]   mIoU {record['miou']:.2f} ({record['wall_s']:.0f} s)", flush=True)


ARM_LABELS = {
    "real": "real only",
    "synthetic": "+ synthetic (as today)",
    "pretrain": "synthetic pre-training, real fine-tuning",
    "filtered": "+ synthetic, loss-filtered",
    "filtered_hard": "+ synthetic, loss-filtered + hardness",
    "filtered_by_real": "+ synthetic, filtered by the real-only model",
    "filtered_hard_by_real": "+ synthetic, filtered by the real-only model + hardness",
    "filtered_by_truth": "+ synthetic, filtered by colour truth (the ceiling)",
}


@dataclass(frozen=True)
class Cell:
    """The runs of one arm at one budget: mean, sample standard deviation and standard error of mIoU."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else float("nan")

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if self.n > 1 else float("nan")

    @property
    def sem(self) -> float:
        return self.std / self.n**0.5 if self.n > 1 else float("nan")


def load_runs(folder: Path, iters: int, pool: int, annotation: str = "edge") -> list[dict]:
    """Every run artefact of the grid with `iters` iterations (synthetic arms: a pool of `pool` samples refined
    by `annotation`). Filtered runs by another scorer or rule than the default get arms of their own."""
    runs = []
    for path in sorted(folder.glob("evidence__*.json")):
        r = json.loads(path.read_text())
        if "arm" not in r:  # a summary (--quick writes its own beside its runs)
            continue
        if r["iterations"] != iters or (r["arm"] != "real" and r["pool"] != pool):
            continue
        if r["arm"] != "real" and r.get("annotation", "edge") != annotation:
            continue
        if r["arm"].startswith("filtered"):
            scorer = r.get("scorer", "synthetic")  # real: FreeMask's offline route; truth: the ceiling
            arm = r["arm"] + (f"_by_{scorer}" if scorer != "synthetic" else "")
            r = {**r, "arm": rule_arm(arm, run_floor(r))}
        runs.append(r)
    return runs


def run_floor(record: dict) -> float:
    """A filtered run's label probability floor; runs made before it was a choice used ln 2 (0.5)."""
    return record.get("min_probability", LEGACY_MIN_PROBABILITY)


def rule_arm(arm: str, floor: float | None) -> str:
    """An arm's name in the tables: a filtered arm made with another floor than today's carries it ('@p0.5')."""
    return arm if floor in (None, MIN_PROBABILITY) else f"{arm}@p{floor}"


def arm_label(arm: str) -> str:
    """The README's name of an arm; a filtered arm with another rule names its label probability floor."""
    base, _, p = arm.partition("@p")
    label = ARM_LABELS[base]
    return f"{label} (rule p < {p})" if p else label


def shown_arms(table: dict[tuple[str, int], Cell]) -> list[str]:
    """The grid's arms, then any other arm the table holds (another scorer or rule), in a stable order."""
    others = sorted({k[0] for k in table} - set(ARMS), key=lambda a: (list(ARM_LABELS).index(a.partition("@p")[0]), a))
    return [*ARMS, *others]


def cells(runs: list[dict]) -> dict[tuple[str, int], Cell]:
    out: dict[tuple[str, int], list[float]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        out.setdefault((r["arm"], r["budget_percent"]), []).append(float(r["miou"]))
    return {k: Cell(tuple(v)) for k, v in out.items()}


def difference(a: Cell | None, b: Cell | None) -> tuple[float, float]:
    """(mean of a - mean of b, the standard error of that difference); NaNs when either is missing."""
    if a is None or b is None:
        return float("nan"), float("nan")
    return a.mean - b.mean, (a.sem**2 + b.sem**2) ** 0.5


def targets(table: dict[tuple[str, int], Cell], min_seeds: int = 3) -> dict[str, dict]:
    """The issue's targets, each {goal, value, met, ...}: a difference counts only beyond twice its standard error."""

    def enough(*keys: tuple[str, int]) -> bool:
        return all(k in table and table[k].n >= min_seeds for k in keys)

    def best(budget: int) -> str | None:
        arms = [a for a in SYNTHETIC_ARMS if (a, budget) in table]
        return max(arms, key=lambda a: table[(a, budget)].mean) if arms else None

    out: dict[str, dict] = {}
    arm = best(100)
    d, se = difference(table.get((arm, 100)) if arm else None, table.get(("real", 100)))
    ok = arm is not None and enough((arm, 100), ("real", 100))
    out["full_data_gain"] = {
        "goal": "at 100% real, the best synthetic arm beats real only by at least 10 mIoU (beyond 2 standard errors)",
        "best_arm": arm,
        "value": _r(d),
        "standard_error": _r(se),
        "met": bool(ok and d >= 10 and d > 2 * se),
    }
    arm = best(5)
    d, se = difference(table.get((arm, 5)) if arm else None, table.get(("real", 100)))
    ok = arm is not None and enough((arm, 5), ("real", 100))
    out["replaces_95_percent_of_labels"] = {
        "goal": "at 5% real, the best synthetic arm matches (within 2 standard errors) or beats real only at 100%",
        "best_arm": arm,
        "value": _r(d),
        "standard_error": _r(se),
        "met": bool(ok and d >= -2 * se),
    }

    def gain(arm: str) -> dict:
        gains = {b: difference(table.get((arm, b)), table.get(("synthetic", b))) for b in BUDGETS}
        ok = all(enough((arm, b), ("synthetic", b)) for b in BUDGETS)
        return {
            "value": {f"{b}%": _r(g) for b, (g, _) in gains.items()},
            "standard_error": {f"{b}%": _r(se) for b, (_, se) in gains.items()},
            "met": bool(ok and all(g >= 1 and g > 2 * se for g, se in gains.values())),
        }

    rules = sorted({a.partition("@p")[2] for a, _ in table if a.partition("@p")[0] == "filtered_hard"} - {""})
    out["filtering_and_hardness_gain"] = {
        "goal": "filtered + hardness beats synthetic as today by at least 1 mIoU at every budget (beyond 2 standard "
        f"errors), with today's filter rule (label probability floor {MIN_PROBABILITY})",
        **gain("filtered_hard"),
        "other_rules": {f"min_probability {p}": gain(f"filtered_hard@p{p}") for p in rules},
    }
    return out


def _r(x: float) -> float | None:
    return None if x != x else round(x, 2)


SCALING_POOLS = (96, 384, 1536, 6144)
SCALING_BUDGETS = (5, 100)
SCALING_ARMS = ("synthetic", "filtered_hard")


def scaling(folder: Path, iters: int, min_seeds: int = 3) -> dict:
    """mIoU against synthetic pool size at 5% and 100% real, for 'as today' and filtered + hardness (a curve per
    filter rule measured)."""
    runs = [
        r
        for r in (json.loads(p.read_text()) for p in sorted(folder.glob("evidence__*.json")) if "__pool-" in p.name)
        if r["iterations"] == iters
        and r["arm"] in SCALING_ARMS
        and r.get("annotation", "edge") == "edge"
        and r.get("scorer", "synthetic") == "synthetic"
    ]
    curve: dict[str, list[dict]] = {}
    for arm in SCALING_ARMS:
        rules = sorted({run_floor(r) for r in runs if r["arm"] == arm})
        for p in rules if arm.startswith("filtered") else [None]:
            name = rule_arm(arm, p)
            for budget in SCALING_BUDGETS:
                points = []
                for pool in SCALING_POOLS:
                    vals = [
                        r["miou"]
                        for r in runs
                        if (r["arm"], r["budget_percent"], r["pool"]) == (arm, budget, pool)
                        and (p is None or run_floor(r) == p)
                    ]
                    if vals:
                        c = Cell(tuple(vals))
                        points.append({"pool": pool, "n": c.n, "mean": _r(c.mean), "std": _r(c.std)})
                curve[f"{name} at {budget}%"] = points

    def complete(points: list[dict]) -> bool:
        return len([p for p in points if p["n"] >= min_seeds]) == len(SCALING_POOLS)

    met = all(complete(curve.get(f"{arm} at {b}%", [])) for arm in SCALING_ARMS for b in SCALING_BUDGETS)
    return {
        "goal": f"mIoU against pool size {list(SCALING_POOLS)} at {list(SCALING_BUDGETS)}% real, for "
        f"{list(SCALING_ARMS)} (filtered with today's rule, floor {MIN_PROBABILITY}), each with at least "
        f"{min_seeds} seeds",
        "value": curve,
        "met": met,
    }


def summarise(folder: Path, iters: int, pool: int, curve_path: Path | None, out_dir: Path = RESULTS) -> Path | None:
    """Write the grid's summary JSON (runs, seeds, table, targets) and its plot into `out_dir`; print the table."""
    runs = load_runs(folder, iters, pool)
    if not runs:
        print(f"[evidence] no runs with {iters} iterations and pool {pool} in {folder}")
        return None
    table = cells(runs)
    t = targets(table)
    t["scaling_curve"] = scaling(folder, iters)
    noisy = noisy_pool(folder, iters, pool, table)
    lines = [f"{'arm':<56}" + "".join(f"{f'{b}% real':>18}" for b in BUDGETS)]
    for arm in shown_arms(table):
        row = f"{arm_label(arm):<56}"
        for b in BUDGETS:
            c = table.get((arm, b))
            row += f"{f'{c.mean:.1f} ± {c.std:.1f} (n={c.n})' if c else '-':>18}"
        lines.append(row)
    print("\n".join(lines))
    print("\nmarkdown:\n" + markdown_table(table))
    for name, target in t.items():
        print(f"[evidence] target {name}: {'MET' if target['met'] else 'not met'} (value {target['value']})")
    out = out_dir / result_path("evidence", iters=iters, pool=pool).name
    plot = plot_table(table, out.with_suffix(".png"), iters, pool)
    write_result(
        out,
        {
            "what": "toy FCN, mmseg tools/train.py; mIoU (%) on 200 held-out real toy images; mean and sample standard "
            "deviation over seeds (the seed picks the real subset and the trainer's seed)",
            "date": time.strftime("%Y-%m-%d"),
            "iterations": iters,
            "batch_size": BATCH,
            "pool": pool,
            "ratio": MIX_RATIO,
            "seeds": sorted({r["seed"] for r in runs}),
            "table": [
                {
                    "arm": a,
                    "budget_percent": b,
                    "n": c.n,
                    "mean": _r(c.mean),
                    "std": _r(c.std),
                    "values": list(c.values),
                }
                for (a, b), c in sorted(table.items())
            ],
            "targets": t,
            "noisy_pool": noisy,
            "filtering_ceiling": ceiling(table),
            "learning_curve": curve_path.name if curve_path else None,
            "plot": plot.name,
            "runs": runs,
        },
    )
    return out


def ceiling(table: dict[tuple[str, int], Cell]) -> dict | None:
    """What filtering by colour truth (an oracle: every contradicted pixel ignored, no other) gains over the mix as
    today and over the loss filter, per budget: the most any filter of labels could add on this pool."""
    if not any(a == "filtered_by_truth" for a, _ in table):
        return None
    out: dict = {"what": "mean difference in mIoU and its standard error; not a target"}
    for other in ("synthetic", "filtered"):
        for b in BUDGETS:
            d, se = difference(table.get(("filtered_by_truth", b)), table.get((other, b)))
            out[f"over {other}, {b}%"] = {"value": _r(d), "standard_error": _r(se)}
    return out


def noisy_pool(folder: Path, iters: int, pool: int, edge: dict[tuple[str, int], Cell]) -> dict | None:
    """The arms on the pool without mask refinement (noisier masks), beside the same arms on the edge pool, and
    what filtering (+ hardness) gains on each: does filtering help where there is noise to remove?"""
    runs = [r for r in load_runs(folder, iters, pool, annotation="none") if r["arm"] != "real"]
    if not runs:
        return None
    table = cells(runs)
    print("\nthe pool without mask refinement:\n" + markdown_table(table, arms=sorted({a for a, _ in table})))
    gains = {}
    for arm in sorted({a for a, _ in table} - {"synthetic"}):
        for b in BUDGETS:
            for pool_name, cells_ in (("none", table), ("edge", edge)):
                d, se = difference(cells_.get((arm, b)), cells_.get(("synthetic", b)))
                if d == d:
                    gains[f"{arm_label(arm)} - as today, {b}%, {pool_name} pool"] = {
                        "value": _r(d),
                        "standard_error": _r(se),
                    }
    return {
        "what": "the same arms on a pool of the same prompts and seeds whose masks were not refined (refine: none)",
        "table": [
            {"arm": a, "budget_percent": b, "n": c.n, "mean": _r(c.mean), "std": _r(c.std), "values": list(c.values)}
            for (a, b), c in sorted(table.items())
        ],
        "gains": gains,
        "runs": runs,
    }


def markdown_table(table: dict[tuple[str, int], Cell], arms: list[str] | None = None) -> str:
    """The table as the README shows it: mean ± standard deviation (seeds) per arm and budget."""
    rows = ["| arm | " + " | ".join(f"{b}% real" for b in BUDGETS) + " |", "|---|" + "---|" * len(BUDGETS)]
    for arm in arms if arms is not None else shown_arms(table):
        cells_ = [table.get((arm, b)) for b in BUDGETS]
        text = [
            f"{c.mean:.1f} ± {c.std:.1f} (n={c.n})" if c and c.n > 1 else (f"{c.mean:.1f} (n=1)" if c else "-")
            for c in cells_
        ]
        rows.append(f"| {arm_label(arm)} | " + " | ".join(text) + " |")
    return "\n".join(rows)


def seed_counts(cells_: list[Cell]) -> str:
    """'3', or '1-3' when the points of a line have different numbers of seeds."""
    lo, hi = min(c.n for c in cells_), max(c.n for c in cells_)
    return str(lo) if lo == hi else f"{lo}-{hi}"


def plot_table(table: dict[tuple[str, int], Cell], path: Path, iters: int, pool: int) -> Path:
    """mIoU against label budget, one line per arm, error bars of one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for k, arm in enumerate(shown_arms(table)):
        pts = [(b, table[(arm, b)]) for b in BUDGETS if (arm, b) in table]
        if not pts:
            continue
        xs = [b * (1 + 0.03 * (k - 2)) for b, _ in pts]  # a small offset so the error bars do not overlap
        ax.errorbar(
            xs,
            [c.mean for _, c in pts],
            yerr=[0 if c.n < 2 else c.std for _, c in pts],
            marker="o",
            capsize=3,
            label=f"{arm_label(arm)} (n={seed_counts([c for _, c in pts])})",
        )
    ax.set_xscale("log")
    ax.set_xticks(list(BUDGETS), [f"{b}%" for b in BUDGETS])
    ax.set_xlabel("real labels used (share of 200 toy images)")
    ax.set_ylabel("mIoU on 200 held-out real images (%)")
    ax.set_title(f"toy FCN, {iters} iterations, synthetic pool {pool}: mean ± std over seeds", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def main() -> None:
    # One thread per training process: with several on a small shared machine, torch's default of one
    # thread per core oversubscribes it and each run crawls (seen here: 2.5 s per iteration instead of 0.08).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/synthaug_evidence"))
    ap.add_argument("--iters", type=int, default=3000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--pool", type=int, default=1024)
    ap.add_argument("--curve", action="store_true", help="only the real-only learning curve at 100%%")
    ap.add_argument("--every", type=int, default=500, help="--curve: validate every this many iterations")
    ap.add_argument("--quick", action="store_true", help="a smoke run in minutes (not evidence)")
    ap.add_argument("--prepare", action="store_true", help="only make the data and the pool (generation is long)")
    ap.add_argument("--summary", action="store_true", help="only summarise the runs made so far")
    ap.add_argument("--scorer", choices=SCORERS, default="synthetic", help="filtered arms: whose model scores the pool")
    ap.add_argument(
        "--annotation", choices=ANNOTATIONS, default="edge", help="the pool's mask refinement (none: a noisier pool)"
    )
    ap.add_argument(
        "--min-probability",
        type=float,
        default=MIN_PROBABILITY,
        help=f"filtered arms: the rule's label probability floor (default {MIN_PROBABILITY})",
    )
    ap.add_argument(
        "--scaling", type=int, nargs="*", default=None, help=f"the pool-size curve for these sizes ({SCALING_POOLS})"
    )
    args = ap.parse_args()
    try:
        FilterRule(min_probability=args.min_probability)
    except ValueError as err:
        ap.error(f"--min-probability: {err}")
    if args.scaling is not None and (args.annotation, args.scorer) != ("edge", "synthetic"):
        ap.error(
            "--scaling is measured on the edge pool, scored by the mix's own model: leave out --annotation/--scorer"
        )
    ws = Workspace(args.work)
    if args.curve:
        curve(ws, args.iters, args.every, args.seeds[0])
        return
    if args.prepare:
        ws.toy_data()
        ws.ensure_pool(args.pool, args.annotation)
        return
    folder = RUNS
    if args.quick:  # its results are not evidence: they stay in the work folder
        args.iters, args.seeds, args.pool, folder = 40, [0], 64, ws.root / "quick_runs"
    if not args.summary:
        run_grid(ws, grid(args), folder)
    curves = sorted(RESULTS.glob("evidence_curve__*.json"))
    if args.quick:
        summarise(folder, args.iters, args.pool, None, out_dir=folder / "summary")
    else:
        summarise(folder, args.iters, args.pool, curves[-1] if curves else None)


if __name__ == "__main__":
    main()

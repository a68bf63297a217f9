"""The `synthaug` command line: demo, generate, produce, train-annotator, toy-data, verify, index, stats, export,
show, wrap-config."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command imports it when it runs, so that --help stays light
    from synthaug.config import GenerationConfig
    from synthaug.scoring import LiveScoring


def _cmd_demo(args: argparse.Namespace) -> int:
    from synthaug.demo import run_demo

    run_demo(
        args.out,
        num=args.num,
        steps=args.steps,
        guidance=args.guidance,
        model=args.model,
        train=not args.no_train,
        n_real=args.real,
        train_iters=args.train_iters,
        report_path=args.report,
    )
    return 0


def _cmd_toy_data(args: argparse.Namespace) -> int:
    from synthaug.toy.dataset import write_toy_dataset

    splits = {"train": args.train, "val": args.val, "test": args.test}
    summary = write_toy_dataset(args.out, splits, size=args.size, seed=args.seed)
    print(
        f"wrote {sum(s['count'] for s in summary['splits'].values())} images to {args.out} "
        f"(mmseg img_dir/ann_dir and COCO annotations/instances_*.json)"
    )
    return 0


def _generation_config(args: argparse.Namespace) -> GenerationConfig:
    """--config's generation settings (or the defaults), with --model on top."""
    from synthaug.config import GenerationConfig

    cfg = GenerationConfig.load(args.config) if args.config else GenerationConfig()
    if args.model:
        cfg.model = args.model
    if getattr(args, "model_config", None):
        cfg.model_config = args.model_config
    return cfg


def _cmd_generate(args: argparse.Namespace) -> int:
    from synthaug.generation_job import run_generation

    cfg = _generation_config(args)
    if args.device:
        cfg.device = args.device
    n = run_generation(cfg, args.out, num=args.num)
    print(f"wrote {n} samples to {args.out}; look at them with: synthaug show {args.out} --out GALLERY_DIR")
    return 0


def _cmd_produce(args: argparse.Namespace) -> int:
    from synthaug.producer import Producer

    cfg = _generation_config(args)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.nice:
        os.nice(args.nice)  # yield the CPU to the training run it feeds
    scoring = _live_scoring(args, cfg.device)
    producer = Producer(
        cfg,
        args.store,
        device=args.device,
        target_pool=args.target_pool,
        max_samples=args.max_samples,
        segment=args.segment,
        retire_grace_s=args.retire_grace,
        parent_pid=args.parent_pid,
        scoring=scoring,
        hardness_bias=args.hardness_bias,
        hardness_cap=args.hardness_cap,
    )
    print(f"[produce] segment {producer.segment} on {producer.cfg.device} into {args.store}", flush=True)
    n = producer.run()
    print(f"[produce] stopped after {n} samples ({producer.retired} retired)", flush=True)
    return 0


def _cmd_train_annotator(args: argparse.Namespace) -> int:
    from synthaug.annotators.decoder_training import TrainOptions, read_labelled_folder, train_decoder
    from synthaug.config import GenerationConfig
    from synthaug.generator import load_model

    cfg = GenerationConfig.load(args.config) if args.config else GenerationConfig()
    model_path = args.model or cfg.model
    options = TrainOptions(
        timestep=args.timestep,
        attention_factors=tuple(args.attention_factors) if args.attention_factors else None,
        width=args.width,
        instances=not args.no_instances,
        iterations=args.iterations,
        batch_size=args.batch_size,
        val_fraction=args.val_fraction,
        template=args.template,
        seed=args.seed,
    )
    vocab = cfg.class_vocabulary()
    model = load_model(model_path, device=args.device or cfg.device, config=args.model_config or cfg.model_config)
    data = read_labelled_folder(
        args.images, args.masks, args.size or model.default_size, instances_dir=args.instances, limit=args.limit
    )
    print(f"[train-annotator] {len(data)} labelled images, model {model.path}, classes {list(vocab.names)}")
    result = train_decoder(model, data, vocab, options, out=args.out)
    print(
        f"wrote {result.path} ({result.record['seconds']:.0f} s); generate with it: method: decoder, "
        f"annotator: {{path: {result.path}}} in gen.yaml"
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from synthaug.store_ops import verify
    from synthaug.store_repair import purge_quarantine

    if args.purge_quarantine:
        print(f"deleted {purge_quarantine(args.store)} quarantined file(s) from {args.store / 'quarantine'}")
        return 0
    report = verify(args.store, repair=args.repair, sample=args.sample, jobs=args.jobs, progress=sys.stderr.isatty())
    print(report.summary())
    if args.repair:
        return 1 if report.remaining else 0
    return 0 if report.clean else 1


def _cmd_index(args: argparse.Namespace) -> int:
    from synthaug.store_ops import index_store

    report = index_store(args.store, rebuild=args.rebuild)
    print(report.summary())
    return 1 if report.failed else 0


def _cmd_stats(args: argparse.Namespace) -> int:
    import json

    from synthaug.store_ops import format_stats, stats

    s = stats(args.store)
    print(json.dumps(s, indent=2) if args.json else format_stats(s))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from synthaug.store_ops import export

    n = export(args.store, args.out, args.format, split=args.split, link=args.link, shard_size=args.shard_size)
    print(f"exported {n} samples to {args.out} ({args.format})")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from synthaug.gallery import write_gallery

    page = write_gallery(args.store, args.out, limit=args.limit)
    print(f"gallery: {page}\ncontact sheet: {page.parent / 'contact_sheet.png'}")
    return 0


def _add_class_options(parser: argparse.ArgumentParser, prefix: str) -> None:
    parser.add_argument(
        f"{prefix}classes",
        default=None,
        help="the model's class names in its ids, comma-separated or a JSON list (detectron2: by default its "
        "DATASETS.TRAIN's)",
    )
    parser.add_argument(
        f"{prefix}class-map",
        action="append",
        default=[],
        metavar="STORE=MODEL",
        help="map a store class to a model class name or id ('STORE=' ignores it); repeat for more (as the mix's)",
    )


def _class_options(args: argparse.Namespace, prefix: str) -> tuple[tuple[str, ...] | None, dict | None]:
    """(--classes as a tuple or None, --class-map as a dict or None)."""
    import json

    from synthaug.vocabulary import parse_class_map

    option, text = f"--{prefix.replace('_', '-')}classes", getattr(args, f"{prefix}classes")
    if text and text.lstrip().startswith("["):  # a JSON list: names may hold commas ('road, route' in ADE20K)
        try:
            names = json.loads(text)
        except ValueError as err:
            raise ValueError(f"{option} {text[:80]!r} is not a JSON list of names ({err})") from None
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise ValueError(f"{option} {text[:80]!r}: give a JSON list of class names")
        classes = tuple(names)
    else:
        classes = tuple(n.strip() for n in text.split(",")) if text else None
    if classes is not None and not all(n.strip() for n in classes):
        raise ValueError(f"{option} {text!r} has an empty name: write a,b,c (or a JSON list)")
    entries = getattr(args, f"{prefix}class_map")
    return classes, (parse_class_map(entries, f"--{prefix.replace('_', '-')}class-map") if entries else None)


def _live_scoring(args: argparse.Namespace, device: str) -> LiveScoring | None:
    """The producer's LiveScoring from `synthaug produce`'s options (None without --score-config)."""
    if args.score_config is None and args.min_probability is not None:
        raise ValueError("--min-probability sets live scoring's rule: give --score-config and --score-work-dir too")
    if (args.score_config is None) != (args.score_work_dir is None):
        raise ValueError(
            "--score-config and --score-work-dir go together: the config and where its run writes checkpoints"
        )
    if args.score_config is None:
        return None
    from synthaug.scoring import LiveScoring

    classes, class_map = _class_options(args, "score_")
    return LiveScoring(
        args.score_config,
        args.score_work_dir,
        args.score_framework,
        device,
        args.margin,
        args.score_every,
        classes,
        class_map,
        args.min_probability,
    )


def _cmd_score(args: argparse.Namespace) -> int:
    from synthaug.scoring import FilterRule, Scores, load_loss_model, score_store

    classes, class_map = _class_options(args, "")
    rule = FilterRule(margin=args.margin, min_probability=args.min_probability)  # a bad value fails before loading
    model = load_loss_model(args.framework, args.config, args.checkpoint, args.device, classes)

    def progress(done: int, total: int) -> None:
        print(f"\rscored {done}/{total}", end="", file=sys.stderr, flush=True)

    path = score_store(
        args.store,
        model,
        rule,
        tag=args.tag or Path(args.checkpoint).stem,
        batch_size=args.batch_size,
        progress=progress if sys.stderr.isatty() else None,
        class_map=class_map,
    )
    header = Scores.read(path).header
    print(f"scores of {header['samples']} samples ({header['unreadable']} unreadable) by {args.checkpoint}: {path}")
    for name, share in header["class_ignored_share"].items():
        print(f"  {name}: mean loss {header['class_mean_loss'][name]}, ignored share {share}")
    return 0


def _add_min_probability(parser: argparse.ArgumentParser, prefix: str) -> None:
    parser.add_argument(
        "--min-probability",
        type=float,
        default=None,
        help=f"{prefix}never ignore a pixel whose label the model gives at least this probability (an instance: "
        "its mask's geometric mean probability); default 0.1 for a semantic model, 0.5 for an instance model",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthaug",
        description="Diffusion-generated, attention-annotated segmentation data for MMSegmentation and detectron2.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="generate and annotate with the built-in toy model, score, and show")
    demo.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default: demo_out)")
    demo.add_argument("--num", type=int, default=96, help="images to generate (default: 96)")
    demo.add_argument("--steps", type=int, default=25, help="denoising steps (default: 25)")
    demo.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance (default: 3)")
    demo.add_argument("--model", default=None, help="local model folder (default: the shipped toy model)")
    demo.add_argument("--report", type=Path, default=None, help="where to write the report (default: OUT/report.json)")
    demo.add_argument("--no-train", action="store_true", help="skip the mmseg training comparison")
    demo.add_argument("--train-iters", type=int, default=600, help="iterations per training run (default: 600)")
    demo.add_argument("--real", type=int, default=10, help="real toy training images (default: 10)")
    demo.set_defaults(func=_cmd_demo)

    toy = sub.add_parser("toy-data", help="write a toy 'real' dataset: mmseg folders and COCO JSON")
    toy.add_argument("--out", type=Path, required=True)
    toy.add_argument("--train", type=int, default=200)
    toy.add_argument("--val", type=int, default=50)
    toy.add_argument("--test", type=int, default=100)
    toy.add_argument("--size", type=int, default=32, help="image side in pixels (default: 32, the model's size)")
    toy.add_argument("--seed", type=int, default=0)
    toy.set_defaults(func=_cmd_toy_data)

    gen = sub.add_parser("generate", help="generate annotated samples into a store")
    gen.add_argument("--config", type=Path, default=None, help="gen.yaml (default: toy model, cross-attention)")
    gen.add_argument("--out", type=Path, required=True, help="the store to write (created if missing)")
    gen.add_argument("--num", type=int, default=None, help="how many samples (default: the config's num)")
    gen.add_argument("--device", default=None, help="e.g. cpu, cuda, cuda:1 (default: the config's)")
    gen.add_argument(
        "--model", default=None, help="local diffusers folder or single-file checkpoint (default: the config's)"
    )
    gen.add_argument("--model-config", default=None, help="a single-file --model's diffusers folder (its configs)")
    gen.set_defaults(func=_cmd_generate)

    prod = sub.add_parser("produce", help="keep generating into a store while training reads it (online pool)")
    prod.add_argument("--config", type=Path, default=None, help="gen.yaml (default: toy model, cross-attention)")
    prod.add_argument("--store", type=Path, required=True, help="the store to fill (created if missing)")
    prod.add_argument(
        "--device", default=None, help="e.g. cuda:1 (default: the config's; 'cuda' under torchrun = local rank)"
    )
    prod.add_argument("--target-pool", type=int, default=None, help="keep at most N live samples, retiring the oldest")
    prod.add_argument("--max-samples", type=int, default=None, help="stop after N samples (default: run until told)")
    prod.add_argument("--segment", default=None, help="segment name (default: producer-HOST, -rankR under torchrun)")
    prod.add_argument("--retire-grace", type=float, default=600.0, help="seconds before retired files are deleted")
    prod.add_argument(
        "--model", default=None, help="local diffusers folder or single-file checkpoint (default: the config's)"
    )
    prod.add_argument("--model-config", default=None, help="a single-file --model's diffusers folder (its configs)")
    prod.add_argument("--parent-pid", type=int, default=None, help="stop when this process is gone (supervisors)")
    prod.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    prod.add_argument("--nice", type=int, default=0, help="lower the process priority by N (Unix nice)")
    prod.add_argument(
        "--score-config",
        type=Path,
        default=None,
        help="re-score the store with each new checkpoint of this training config",
    )
    prod.add_argument("--score-work-dir", type=Path, default=None, help="the training run's work dir (last_checkpoint)")
    prod.add_argument("--score-framework", default="mmseg", help="mmseg or detectron2 (default: mmseg)")
    prod.add_argument("--score-every", type=int, default=1, help="look for a new checkpoint every N batches")
    _add_class_options(prod, "--score-")
    prod.add_argument(
        "--margin", type=float, default=1.25, help="scoring: ignore pixels above margin x their class's median loss"
    )
    _add_min_probability(prod, "scoring: ")
    prod.add_argument("--hardness-bias", action="store_true", help="prompt for hard classes more often (needs scores)")
    prod.add_argument("--hardness-cap", type=float, default=3.0, help="largest class weight over the mean (default: 3)")
    prod.set_defaults(func=_cmd_produce)

    ta = sub.add_parser(
        "train-annotator", help="train the learned decoder annotator (DatasetDM) on a few labelled images"
    )
    ta.add_argument("--images", type=Path, required=True, help="folder of labelled images")
    ta.add_argument("--masks", type=Path, required=True, help="folder of mask PNGs (pixel = class id), same file stems")
    ta.add_argument("--instances", type=Path, default=None, help="optional instance-id PNGs (0 = none), same stems")
    ta.add_argument("--out", type=Path, required=True, help="the annotator file to write (.safetensors)")
    ta.add_argument(
        "--model",
        default=None,
        help="local diffusers folder or single-file checkpoint (default: the config's, else toy)",
    )
    ta.add_argument("--model-config", default=None, help="a single-file --model's diffusers folder (its configs)")
    ta.add_argument("--config", type=Path, default=None, help="gen.yaml whose model and vocabulary it will serve")
    ta.add_argument("--device", default=None, help="e.g. cpu, cuda (default: the config's)")
    ta.add_argument("--size", type=int, default=None, help="resize images to this side (default: the model's)")
    ta.add_argument("--iterations", type=int, default=600, help="training iterations (default: 600)")
    ta.add_argument("--batch-size", type=int, default=8)
    ta.add_argument("--timestep", type=int, default=50, help="the timestep whose features it reads (default: 50)")
    ta.add_argument(
        "--attention-factors",
        type=int,
        nargs="+",
        default=None,
        help="cross-attention factors read (default: those of 1 2 the model has)",
    )
    ta.add_argument("--width", type=int, default=64, help="decoder channels (default: 64)")
    ta.add_argument("--no-instances", action="store_true", help="semantic head only")
    ta.add_argument("--val-fraction", type=float, default=0.2, help="held-out share scored with mIoU (default: 0.2)")
    ta.add_argument("--template", default="a {cls}", help="prompt of a labelled image; {cls} = its class names")
    ta.add_argument("--limit", type=int, default=None, help="use the first N labelled images only")
    ta.add_argument("--seed", type=int, default=0)
    ta.set_defaults(func=_cmd_train_annotator)

    verify = sub.add_parser("verify", help="read every sample of a store back and report problems")
    verify.add_argument("store", type=Path)
    verify.add_argument(
        "--repair",
        action="store_true",
        help="move corrupt samples and crash leftovers into quarantine/, blank bad log lines (deletes nothing); "
        "exits 1 while problems remain",
    )
    verify.add_argument(
        "--purge-quarantine", action="store_true", help="delete the files an earlier --repair moved into quarantine/"
    )
    verify.add_argument("--sample", type=int, default=None, help="read back only N samples drawn at random")
    verify.add_argument("--jobs", type=int, default=1, help="threads that read samples back (default: 1)")
    verify.set_defaults(func=_cmd_verify)

    sc = sub.add_parser(
        "score", help="score every sample with a trained model's per-pixel loss; the mix then ignores noisy pixels"
    )
    sc.add_argument("store", type=Path)
    sc.add_argument("--framework", default="mmseg", help="mmseg or detectron2 (default: mmseg)")
    _add_class_options(sc, "--")
    sc.add_argument("--config", required=True, help="the model's training config")
    sc.add_argument("--checkpoint", required=True, help="a checkpoint of that config (trained on the store's classes)")
    sc.add_argument("--device", default="cpu")
    sc.add_argument("--margin", type=float, default=1.25, help="ignore pixels above margin x their class's median loss")
    _add_min_probability(sc, "")
    sc.add_argument("--batch-size", type=int, default=16)
    sc.add_argument("--tag", default=None, help="a name for the scores file (default: the checkpoint's name)")
    sc.set_defaults(func=_cmd_score)

    st = sub.add_parser("stats", help="counts per class and segment, quality distribution")
    st.add_argument("store", type=Path)
    st.add_argument("--json", action="store_true", help="print JSON instead of a table")
    st.set_defaults(func=_cmd_stats)

    ix = sub.add_parser("index", help="write the index of each sealed segment, so the store opens fast (optional)")
    ix.add_argument("store", type=Path)
    ix.add_argument("--rebuild", action="store_true", help="rewrite every sealed segment's index from its manifest")
    ix.set_defaults(func=_cmd_index)

    ex = sub.add_parser("export", help="write the store as mmseg folders, COCO JSON or WebDataset tar shards")
    ex.add_argument("store", type=Path)
    ex.add_argument("out", type=Path)
    ex.add_argument("--format", choices=("mmseg", "coco", "webdataset"), required=True)
    ex.add_argument("--shard-size", type=int, default=1000, help="webdataset: samples per tar shard (default: 1000)")
    ex.add_argument("--split", default="train", help="split folder name (default: train)")
    ex.add_argument(
        "--link", action="store_true", help="hard-link images instead of copying them (an edit then changes the store)"
    )
    ex.set_defaults(func=_cmd_export)

    show = sub.add_parser("show", help="write an HTML gallery with mask overlays and a PNG contact sheet")
    show.add_argument("store", type=Path)
    show.add_argument("--out", type=Path, required=True)
    show.add_argument("--limit", type=int, default=500, help="at most this many samples (default: 500)")
    show.set_defaults(func=_cmd_show)

    wrap = sub.add_parser(
        "wrap-config", help="write a training config that inherits yours and mixes in a store (mmseg, detectron2)"
    )
    wrap.add_argument("config", help="your training config: mmseg .py, detectron2 .yaml or LazyConfig .py")
    wrap.add_argument("--store", required=True, help="the store to mix in (as the training run will see the path)")
    wrap.add_argument("--ratio", type=float, required=True, help="expected share of synthetic samples, in (0, 1)")
    wrap.add_argument("-o", "--out", type=Path, default=None, help="the new config (mmseg, yacs)")
    wrap.add_argument("--seed", type=int, default=0, help="the mix plan's seed (default: 0)")
    wrap.add_argument("--interval", type=int, default=50, help="mmseg: adopt new store samples every N iterations")
    wrap.set_defaults(func=_cmd_wrap_config)
    return parser


def _cmd_wrap_config(args: argparse.Namespace) -> int:
    from synthaug.wrap_config import wrap_config

    print(wrap_config(args.config, args.store, args.ratio, args.out, seed=args.seed, interval=args.interval))
    return 0


def main(argv: list[str] | None = None) -> int:
    from synthaug.store import StoreError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, PermissionError, StoreError) as err:
        print(f"synthaug {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

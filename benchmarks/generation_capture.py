#!/usr/bin/env python3
"""Cost of attention capture and of mask extraction, on the toy model and on a UNet shaped like SD 1.5.

    python benchmarks/generation_capture.py [--sd] [--sd-steps 2] [--toy-batch 16]

Measures, side by side in one run (plain and captured generations alternate, medians of the
repeats), the ratio `generation with capture / plain generation` and the ratio `mask extraction
(+ refinement) / generation time` per image. The SD-1.5-shaped model has random weights
(UNet 860M, CLIP text encoder, VAE, 512x512 = 64x64 latents); one or two steps suffice for
timing. Writes benchmarks/results/generation_capture.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from results_io import result_path, write_result

from synthaug.annotators import build_annotator
from synthaug.annotators.pipeline import AnnotationPipeline
from synthaug.generator import generate_batch, load_model
from synthaug.toy.evaluate import toy_prompts
from synthaug.vocabulary import ClassVocabulary

#: Every object of a benchmark prompt is labelled class 1 ('object'): the labels are timed, not scored.
BENCH_VOCABULARY = ClassVocabulary(("background", "object"), ((0, 0, 0), (255, 0, 0)))

METHODS = {
    # name: (method, params, refine) -- the toy factors; SD uses the same methods at its own factors
    "cross_attention": ("cross_attention", {"factors": [2]}, "none"),
    "self_refined": ("self_refined", {"cross_factors": [2], "self_factor": 2}, "none"),
    "cross_attention+edge": ("cross_attention", {"factors": [2]}, "edge"),
}
SD_METHODS = {
    "cross_attention (DiffuMask: 64/32/16 maps)": ("cross_attention", {"factors": [1, 2, 4]}, "none"),
    "self_refined (Dataset Diffusion: self 32, cross 16)": (
        "self_refined",
        {"cross_factors": [4], "self_factor": 2},
        "none",
    ),
    "cross_attention+edge": ("cross_attention", {"factors": [1, 2, 4]}, "edge"),
}


def pipeline(annotator, refine_method: str) -> AnnotationPipeline:
    return AnnotationPipeline(annotator, BENCH_VOCABULARY, refine_method)


def make_sd15_random(path: Path) -> Path:
    """A folder with SD-1.5-shaped components and random weights (no download), for timing only."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from synthaug.random_sd import clip_text_encoder, save_sd_folder
    from synthaug.toy.model import build_tokenizer

    torch.manual_seed(0)
    # SD 1.5: the default blocks (320/640/1280/1280, 2 layers, 8 heads) with 768-d cross-attention, 64x64 latents
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
    )
    tok = build_tokenizer()  # a word-level stand-in: SD's CLIP tokenizer cannot be downloaded here
    tok.model_max_length = 77
    text = clip_text_encoder(tok, 768, 12, 12, 3072, 77)
    save_sd_folder(path / "sd15-random", unet, vae, text, tok)
    return path / "sd15-random"


def time_model(
    model, prompts: list[str], seeds: list[int], steps: int, guidance: float, methods: dict, repeats: int
) -> dict:
    """Interleave plain and captured runs; return medians and ratios."""
    out = {}
    plain_times = []
    captured: dict[str, list[float]] = {name: [] for name in methods}
    extract: dict[str, list[float]] = {name: [] for name in methods}
    annotators = {name: pipeline(build_annotator(m, p), r) for name, (m, p, r) in methods.items()}
    for _ in range(repeats):
        t0 = time.perf_counter()
        generate_batch(model, prompts, seeds, steps=steps, guidance=guidance)
        plain_times.append(time.perf_counter() - t0)
        for name, annot in annotators.items():
            t0 = time.perf_counter()
            batch = generate_batch(
                model, prompts, seeds, steps=steps, guidance=guidance, capture=annot.annotator.capture
            )
            captured[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i, p in enumerate(prompts):
                words = [w for w in p.split() if w not in ("a", "and", "on", "of", "photo")][:2]
                groups = [[j] for j in range(1, 1 + len(words))]
                annot(batch.captured, i, batch.images[i], groups, [1] * len(groups))
            extract[name].append((time.perf_counter() - t0) / len(prompts))
    plain = statistics.median(plain_times)
    out["plain_s_per_batch"] = round(plain, 3)
    for name in methods:
        cap = statistics.median(captured[name])
        out[name] = {
            "capture_s_per_batch": round(cap, 3),
            "capture_over_plain": round(cap / plain, 3),
            "extract_s_per_image": round(statistics.median(extract[name]), 4),
            "extract_over_generation_per_image": round(statistics.median(extract[name]) / (plain / len(prompts)), 4),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--toy-batch", type=int, default=16)
    ap.add_argument("--toy-steps", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sd", action="store_true", help="also time the SD-1.5-shaped model at 512x512")
    ap.add_argument("--sd-steps", type=int, default=2)
    ap.add_argument("--sd-batch", type=int, default=1)
    args = ap.parse_args()
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}",
    }
    device = "cuda" if torch.cuda.is_available() else "cpu"
    toy = load_model(device=device)
    prompts = toy_prompts(args.toy_batch, seed=77)
    results["toy"] = time_model(
        toy, [p.caption for p in prompts], [p.seed for p in prompts], args.toy_steps, 3.0, METHODS, args.repeats
    )
    print(json.dumps({"toy": results["toy"]}, indent=2), flush=True)
    if args.sd:
        with tempfile.TemporaryDirectory() as tmp:
            sd = load_model(make_sd15_random(Path(tmp)), device=device)
            sd_prompts = ["a red circle and a blue square on plain"] * args.sd_batch
            results["sd15_shape_512"] = time_model(
                sd, sd_prompts, list(range(args.sd_batch)), args.sd_steps, 7.5, SD_METHODS, max(1, args.repeats - 1)
            )
        print(json.dumps({"sd15_shape_512": results["sd15_shape_512"]}, indent=2), flush=True)
    write_result(result_path("generation_capture", toy_batch=args.toy_batch, toy_steps=args.toy_steps,
                             sd=f"b{args.sd_batch}s{args.sd_steps}" if args.sd else "off"), results)  # fmt: skip


if __name__ == "__main__":
    main()

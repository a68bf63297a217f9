#!/usr/bin/env python3
"""Cost of attention capture and mask extraction on diffusers pipelines of real shapes, random weights.

    python benchmarks/pipeline_capture.py [--models sd15 sd15_controlnet pixart sd3 sdxl] [--repeats 2]
        [--threads 1]

For each model, side by side in one process (plain and captured generations alternate; medians of
the repeats), the ratios `(generation with capture + mask extraction) / plain generation` (wall time, and on
a CPU the main thread's CPU time, which with `--threads 1` holds all the work and does not depend on what
else runs on the machine) and
`peak memory above the call's start, captured / plain` (resident memory sampled every 5 ms; on a
GPU, torch's peak allocation), after one uncounted warm-up of each. The denoisers and VAEs have the published models' configs (SD-1.5's
UNet at 512 px, SDXL's UNet at 1024 px, PixArt-alpha XL-2 at 512 px, SD3-medium's MMDiT at the size
given) with random weights; `sd15_controlnet` adds a ControlNet made from that UNet (`ControlNetModel.from_unet`,
the shape of the published SD-1.5 ControlNets) and a painted layout as its control image, so its ratio is the
capture cost on FreeMask's route (capture sits on the UNet only; the ControlNet runs uncaptured in both arms).
The text encoders have the real widths but two layers (one for T5) and a
word-level vocabulary, which changes nothing in the denoiser's cost. The pipelines are diffusers' own
classes, driven through synthaug.generator exactly as `synthaug generate` drives them. One JSON per
model and configuration under benchmarks/results/.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from results_io import result_path, write_result

from synthaug.annotators import build_annotator
from synthaug.annotators.pipeline import AnnotationPipeline
from synthaug.attention import attention_factors
from synthaug.generator import DiffusionModel, generate_batch, load_model
from synthaug.layout import control_image
from synthaug.vocabulary import ClassVocabulary

VOCABULARY = ClassVocabulary(("background", "object"), ((0, 0, 0), (255, 0, 0)))
PROMPT = "a red circle and a blue square on plain"
#: The object words of PROMPT, labelled class 1: the masks are timed, not scored.
OBJECT_WORDS = ("circle", "square")


def word_tokenizer(length: int):
    from synthaug.toy.model import build_tokenizer

    tok = build_tokenizer()
    tok.model_max_length = length
    return tok


def clip(width: int, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = word_tokenizer(77)
    config = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=width,
        intermediate_size=4 * width,
        num_hidden_layers=2,
        num_attention_heads=width // 64,
        max_position_embeddings=77,
        projection_dim=width,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config), tok


def t5(width: int = 4096):
    from transformers import T5Config, T5EncoderModel

    tok = word_tokenizer(512)
    config = T5Config(vocab_size=len(tok), d_model=width, d_ff=10240, num_layers=1, num_heads=64, d_kv=64)
    return T5EncoderModel(config), tok


def sd_vae(latent_channels: int = 4, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=latent_channels,
        layers_per_block=2,
        **extra,
    )


def sd15() -> Any:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    text, tok = clip(768)
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # SD 1.5's blocks, 860M
    return StableDiffusionPipeline(
        vae=sd_vae(),
        text_encoder=text,
        tokenizer=tok,
        unet=unet,
        scheduler=DDIMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def sdxl() -> Any:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    text, tok = clip(768)
    text_2, tok_2 = clip(1280, projection=True)
    unet = UNet2DConditionModel(  # SDXL base 1.0's UNet config, 2.6B
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        use_linear_projection=True,
    )
    return StableDiffusionXLPipeline(
        vae=sd_vae(force_upcast=True),
        text_encoder=text,
        text_encoder_2=text_2,
        tokenizer=tok,
        tokenizer_2=tok_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(),
        add_watermarker=False,
    )


def pixart() -> Any:
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    text, tok = t5()
    transformer = PixArtTransformer2DModel(  # PixArt-XL-2-512x512, 0.6B
        sample_size=64,
        num_layers=28,
        attention_head_dim=72,
        num_attention_heads=16,
        patch_size=2,
        in_channels=4,
        out_channels=8,
        caption_channels=4096,
        cross_attention_dim=1152,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
        use_additional_conditions=False,
    )
    return PixArtAlphaPipeline(
        tokenizer=tok, text_encoder=text, vae=sd_vae(), transformer=transformer, scheduler=DPMSolverMultistepScheduler()
    )


def sd3() -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    text, tok = clip(768, projection=True)
    text_2, tok_2 = clip(1280, projection=True)
    text_3, tok_3 = t5()
    transformer = SD3Transformer2DModel(  # SD3-medium's MMDiT, 2B
        sample_size=128,
        patch_size=2,
        in_channels=16,
        num_layers=24,
        attention_head_dim=64,
        num_attention_heads=24,
        joint_attention_dim=4096,
        caption_projection_dim=1536,
        pooled_projection_dim=2048,
        out_channels=16,
        pos_embed_max_size=192,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=sd_vae(16, shift_factor=0.0609, scaling_factor=1.5305),
        text_encoder=text,
        tokenizer=tok,
        text_encoder_2=text_2,
        tokenizer_2=tok_2,
        text_encoder_3=text_3,
        tokenizer_3=tok_3,
    )


def sd15_controlnet() -> Any:
    from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

    base = sd15()
    return StableDiffusionControlNetPipeline(
        **base.components, controlnet=ControlNetModel.from_unet(base.unet), requires_safety_checker=False
    )


#: name: (builder, default size, guidance)
MODELS: dict[str, tuple[Callable[[], Any], int, float]] = {
    "sd15": (sd15, 512, 7.5),
    "sd15_controlnet": (sd15_controlnet, 512, 7.5),
    "sdxl": (sdxl, 1024, 5.0),
    "pixart": (pixart, 512, 4.5),
    "sd3": (sd3, 1024, 7.0),
}


class PeakMemory:
    """Peak memory above the level at entry: torch's peak allocation on CUDA, else resident set size."""

    def __init__(self, device: str) -> None:
        self.cuda = device == "cuda"
        self.peak = 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated()
            return self
        self.start, self.peak, self.running = self.rss(), 0, True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss() - self.start)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.start
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.peak, self.rss() - self.start)


def annotator_for(model: DiffusionModel) -> AnnotationPipeline:
    """The cross-attention annotator at the model's finest maps (DiffuMask's; SD-1.5: its 64/32/16 maps)."""
    factors = attention_factors(model.unet)["cross"]
    wanted = [f for f in factors if f <= 4 * factors[0]][:3]
    return AnnotationPipeline(build_annotator("cross_attention", {"factors": wanted}), VOCABULARY, "none")


def layout_image(size: int) -> np.ndarray:
    """A control image as the producer paints one (synthaug.layout.control_image): a disc and a square of the
    object class."""
    yy, xx = np.mgrid[:size, :size]
    obj = ((yy - size * 0.35) ** 2 + (xx - size * 0.3) ** 2 < (size * 0.18) ** 2) | (
        (abs(yy - size * 0.65) < size * 0.15) & (abs(xx - size * 0.7) < size * 0.15)
    )
    return control_image(obj.astype(np.uint8), VOCABULARY)


def measure(model: DiffusionModel, size: int, steps: int, guidance: float, repeats: int, device: str) -> dict:
    """Alternate plain and captured (+ extraction) runs; medians of time and peak memory, and their ratios."""
    annot = annotator_for(model)
    spec = annot.annotator.capture
    from synthaug.prompts import ObjectTarget, PromptSpec

    groups = model.token_groups(PromptSpec(PROMPT, tuple(ObjectTarget(1, (w,)) for w in OBJECT_WORDS), 0))
    run: dict[str, Any] = dict(prompts=[PROMPT], seeds=[0], steps=steps, guidance=guidance, height=size, width=size)
    if model.arch.control:
        run["control"] = [layout_image(size)]
    plain_t, plain_m, cap_t, cap_m, extract_t, plain_c, cap_c = [], [], [], [], [], [], []
    generate_batch(model, **run)  # warm-up, not counted: first-call allocations and lazy initialisation
    generate_batch(model, **run, capture=spec)
    for _ in range(repeats):
        gc.collect()
        with PeakMemory(device) as mem:
            t0, c0 = time.perf_counter(), time.thread_time()
            generate_batch(model, **run)
            plain_t.append(time.perf_counter() - t0)
            plain_c.append(time.thread_time() - c0)
        plain_m.append(mem.peak)
        gc.collect()
        with PeakMemory(device) as mem:
            t0, c0 = time.perf_counter(), time.thread_time()
            batch = generate_batch(model, **run, capture=spec)
            t1 = time.perf_counter()
            annot(batch.captured, 0, batch.images[0], groups, [1] * len(groups))
            t2 = time.perf_counter()
            cap_c.append(time.thread_time() - c0)
        cap_t.append(t2 - t0)
        extract_t.append(t2 - t1)
        cap_m.append(mem.peak)
        del batch
    plain, captured = statistics.median(plain_t), statistics.median(cap_t)
    pm, cm = statistics.median(plain_m), statistics.median(cap_m)
    return {
        "capture_factors": list(spec.cross_factors),
        "plain_s": round(plain, 2),
        "capture_and_extract_s": round(captured, 2),
        "extract_s": round(statistics.median(extract_t), 3),
        "time_ratio": round(captured / plain, 3),
        # this thread's CPU time: with one torch thread all the work, and untouched by other jobs' share of the cores
        "cpu_time_ratio": round(statistics.median(cap_c) / statistics.median(plain_c), 3) if device == "cpu" else None,
        "plain_peak_mb": round(pm / 2**20),
        "capture_peak_mb": round(cm / 2**20),
        "memory_ratio": round(cm / pm, 3) if pm > 0 else None,
        "runs": {
            "plain_s": plain_t,
            "capture_and_extract_s": cap_t,
            "plain_cpu_s": plain_c,
            "capture_and_extract_cpu_s": cap_c,
            "plain_peak_mb": [round(m / 2**20) for m in plain_m],
            "capture_peak_mb": [round(m / 2**20) for m in cap_m],
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sizes", nargs="*", default=[], help="NAME=PX overrides, e.g. sd3=512")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sizes = dict(item.split("=") for item in args.sizes)
    for name in args.models:
        build, size, guidance = MODELS[name]
        size = int(sizes.get(name, size))
        torch.manual_seed(0)
        pipe = build()
        dtype = torch.float16 if device == "cuda" else torch.float32
        pipe.to(device)
        if dtype != torch.float32:
            pipe.to(dtype)
        model = load_model(pipe)
        params = sum(p.numel() for p in model.unet.parameters())
        print(f"[pipeline_capture] {name}: {type(pipe).__name__}, denoiser {params / 1e9:.2f}B, {size} px", flush=True)
        result = measure(model, size, args.steps, guidance, args.repeats, device)
        result.update(
            {
                "what": f"{type(pipe).__name__} with {name}'s denoiser shape, random weights, {size} px, "
                f"{args.steps} steps, guidance {guidance}, batch 1",
                "denoiser_params": params,
                **(
                    {"controlnet_params": sum(p.numel() for p in pipe.controlnet.parameters())}
                    if model.arch.control
                    else {}
                ),
                "date": time.strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
                f"{'CUDA ' + torch.cuda.get_device_name() if device == 'cuda' else 'CPU'}, {dtype}",
                "targets": {"time_ratio": 1.05, "memory_ratio": 1.10},
            }
        )
        print({k: v for k, v in result.items() if k != "runs"}, flush=True)
        write_result(result_path("pipeline_capture", model=name, size=size, steps=args.steps, device=device), result)
        del model, pipe
        gc.collect()


if __name__ == "__main__":
    main()

"""Stable-Diffusion-shaped model folders with random weights, made offline, for tests and benchmarks.

They hold the real diffusers/transformers classes (UNet2DConditionModel, AutoencoderKL,
CLIPTextModel, a tokenizer) saved with StableDiffusionPipeline.save_pretrained: the same folder
layout as a Stable Diffusion 1.5 snapshot, loadable through the `--model PATH` a user gives.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def clip_text_encoder(
    tokenizer: Any, hidden: int, layers: int, heads: int, intermediate: int, positions: int, **extra: Any
) -> Any:
    """A randomly initialised CLIPTextModel sized for `tokenizer` (its BOS/EOS/PAD ids)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    return CLIPTextModel(config)


def save_sd_folder(path: Path, unet: Any, vae: Any, text_encoder: Any, tokenizer: Any) -> Path:
    """Save the components with SD 1.5's DDIM scheduler as a StableDiffusionPipeline folder at `path`."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return Path(path)

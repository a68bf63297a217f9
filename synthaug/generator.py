"""Load a text-to-image diffusion model from a local folder and drive its denoising loop.

The same code runs Stable Diffusion 1.x/2.x folders (tokenizer, text encoder, UNet, VAE,
scheduler) and synthaug's pixel-space toy model (no VAE). Components load with their own
libraries' ``from_pretrained`` from local paths only; nothing is downloaded. Attention is
captured through ``synthaug.attention`` while the loop runs, never by patching a pipeline.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from synthaug.annotators.base import Annotator
from synthaug.attention import CapturedAttention, CaptureSpec, capture_attention
from synthaug.features import timestep_pass
from synthaug.prompts import PromptSpec
from synthaug.sample import Sample
from synthaug.text import TEXT_MASK_POLICIES, EncodedText, encode_text

if TYPE_CHECKING:
    from synthaug.annotators.pipeline import AnnotationPipeline

#: Short scheduler names accepted by ``--scheduler``; any diffusers scheduler class name works too.
SCHEDULERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "pndm": "PNDMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "lms": "LMSDiscreteScheduler",
}
SYNTHAUG_MODEL_FILE = "synthaug_model.json"


def default_model_path() -> Path:
    """The toy model shipped inside the package: the default of `synthaug generate` and the demo."""
    from synthaug.toy.model import SHIPPED_MODEL_DIR

    return SHIPPED_MODEL_DIR


def resolve_scheduler_class(name: str):
    """The diffusers scheduler class for a short name or class name; ValueError lists the choices."""
    import diffusers

    cls_name = SCHEDULERS.get(name.lower(), name)
    cls = getattr(diffusers, cls_name, None)
    if cls is None or not cls_name.endswith("Scheduler"):
        raise ValueError(
            f"scheduler={name!r} is unknown: use one of {sorted(SCHEDULERS)} or a diffusers scheduler class name"
        )
    return cls


@dataclass
class DiffusionModel:
    """The components of a local text-to-image model, plus how synthaug drives it."""

    path: Path
    tokenizer: Any
    text_encoder: Any
    unet: Any
    scheduler: Any
    vae: Any | None
    text_mask_policy: str = "all"
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell: 8 for Stable Diffusion's VAE, 1 in pixel space."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> int:
        return int(self.card.get("resolution") or self.unet.config.sample_size * self.vae_factor)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this model's samples: path, scheduler and the text mask policy."""
        return {
            "model": str(self.path),
            "model_name": self.card.get("name", self.path.name),
            "scheduler": type(self.scheduler).__name__,
            "text_mask_policy": self.text_mask_policy,
        }


def load_model(
    path: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    scheduler: str | None = None,
) -> DiffusionModel:
    """Load tokenizer, text encoder, UNet, scheduler and (if present) VAE from a local diffusers folder.

    fp16 is used on CUDA unless `dtype` says otherwise; the CPU runs fp32.
    """
    path = Path(path) if path is not None else default_model_path()
    index_file = path / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(
            f"model path {path} has no model_index.json: give a local diffusers model folder "
            "(e.g. a Stable Diffusion 1.5 snapshot saved with save_pretrained), or leave --model unset for the toy model"
        )
    index = json.loads(index_file.read_text())
    missing = [c for c in ("tokenizer", "text_encoder", "unet", "scheduler") if not index.get(c) or index[c][0] is None]
    if missing:
        raise ValueError(f"model {path} lacks components {missing}; synthaug needs a text-to-image UNet model")
    from transformers import AutoTokenizer

    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32

    def component(name: str):
        library, cls_name = index[name]
        cls = getattr(importlib.import_module(library), cls_name)
        extra = {"low_cpu_mem_usage": False} if library == "diffusers" and name != "scheduler" else {}
        return cls.from_pretrained(path, subfolder=name, **extra)

    def place(module):
        module = module.to(device)
        return (module if module.dtype == dtype else module.to(dtype)).eval()

    # A fast tokenizer, for the character offsets that map class words to tokens.
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", use_fast=True)
    text_encoder = place(component("text_encoder"))
    unet = place(component("unet"))
    vae = place(component("vae")) if index.get("vae") and index["vae"][0] else None
    sched = component("scheduler")
    if scheduler is not None:
        sched = resolve_scheduler_class(scheduler).from_config(sched.config)
    card_file = path / SYNTHAUG_MODEL_FILE
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    policy = card.get("text_mask_policy", "all")
    if policy not in TEXT_MASK_POLICIES:
        raise ValueError(f"{card_file}: text_mask_policy={policy!r} is unknown; use one of {TEXT_MASK_POLICIES}")
    for module in (text_encoder, unet, vae):
        if module is not None:
            module.requires_grad_(False)
    return DiffusionModel(path, tokenizer, text_encoder, unet, sched, vae, policy, card)


@dataclass
class GeneratedBatch:
    """Images (B, H, W, 3) uint8, the prompts and seeds, token ids, and the attention captured if captured."""

    images: np.ndarray
    prompts: list[str]
    seeds: list[int]
    input_ids: torch.Tensor
    captured: CapturedAttention | None


def size_multiple(unet_config: dict[str, Any], vae_config: dict[str, Any] | None) -> int:
    """Heights and widths must be multiples of this: VAE factor x the UNet's downsampling."""
    vae_factor = 2 ** (len(vae_config["block_out_channels"]) - 1) if vae_config else 1
    return vae_factor * 2 ** (len(unet_config["block_out_channels"]) - 1)


def check_size(multiple: int, height: int | None, width: int | None) -> None:
    """Raise ValueError naming height/width, the rule and a value that works."""
    for name, value in (("height", height), ("width", width)):
        if value is not None and (value <= 0 or value % multiple):
            raise ValueError(
                f"{name}={value} must be a positive multiple of {multiple} (the VAE factor times the UNet's "
                f"downsampling); try {max(multiple, round(value / multiple) * multiple)}"
            )


def check_size_before_load(path: str | Path | None, height: int | None, width: int | None) -> None:
    """The size check of `check_generation_inputs`, from the model folder's config files alone."""
    path = Path(path) if path is not None else default_model_path()
    index_file, unet_file, vae_file = (
        path / "model_index.json",
        path / "unet" / "config.json",
        path / "vae" / "config.json",
    )
    if not (index_file.is_file() and unet_file.is_file()):
        return  # load_model will say what is missing
    index = json.loads(index_file.read_text())
    has_vae = bool(index.get("vae") and index["vae"][0]) and vae_file.is_file()
    vae_cfg = json.loads(vae_file.read_text()) if has_vae else None
    check_size(size_multiple(json.loads(unet_file.read_text()), vae_cfg), height, width)


def check_generation_inputs(
    model: DiffusionModel,
    prompts: Sequence[str],
    seeds: Sequence[int],
    height: int,
    width: int,
    steps: int,
    guidance: float,
) -> None:
    """Fail before any model work, naming the argument, the rule and the value."""
    if len(prompts) == 0:
        raise ValueError("prompts is empty: give at least one prompt")
    if len(seeds) != len(prompts):
        raise ValueError(f"seeds has {len(seeds)} entries for {len(prompts)} prompts: give one seed per prompt")
    check_size(size_multiple(model.unet.config, model.vae.config if model.vae is not None else None), height, width)
    if steps < 1:
        raise ValueError(f"steps={steps} must be >= 1")
    if guidance < 0:
        raise ValueError(f"guidance={guidance} must be >= 0 (0 or 1 disables classifier-free guidance)")


def guided_text(model: DiffusionModel, prompts: list[str], negative_prompt: str, cfg: bool) -> EncodedText:
    """The prompts' encoding; under classifier-free guidance the negative prompt's rows come first."""
    text = encode_text(model.tokenizer, model.text_encoder, prompts, model.text_mask_policy)
    if not cfg:
        return text
    uncond = encode_text(model.tokenizer, model.text_encoder, [negative_prompt] * len(prompts), model.text_mask_policy)
    return EncodedText(
        torch.cat([uncond.input_ids, text.input_ids]),
        torch.cat([uncond.embeddings, text.embeddings]),
        None if text.encoder_mask is None else torch.cat([uncond.encoder_mask, text.encoder_mask]),
    )


def conditional_rows(text: EncodedText, n: int, cfg: bool) -> EncodedText:
    """The rows of the prompts themselves (the last n under classifier-free guidance)."""
    if not cfg:
        return text
    mask = None if text.encoder_mask is None else text.encoder_mask[n:]
    return EncodedText(text.input_ids[n:], text.embeddings[n:], mask)


def denoise(
    model: DiffusionModel,
    latents: torch.Tensor,
    text: EncodedText,
    guidance: float,
    generators: list[torch.Generator],
    captured: CapturedAttention | None,
) -> torch.Tensor:
    """The sampling loop over the scheduler's timesteps (already set), with classifier-free guidance when
    `guidance` > 1; each step marked in `captured` (its conditional rows: the last half under guidance)."""
    sched, n, cfg = model.scheduler, len(latents), guidance > 1.0
    step_kwargs = {"generator": generators} if "generator" in inspect.signature(sched.step).parameters else {}
    if captured is not None:
        captured.set_layout(tuple(latents.shape[-2:]), slice(n, 2 * n) if cfg else slice(0, n))
    x = latents
    for i, t in enumerate(sched.timesteps):
        if captured is not None:
            captured.begin_step(i, len(sched.timesteps))
        inp = sched.scale_model_input(torch.cat([x, x]) if cfg else x, t)
        pred = model.unet(inp, t, text.embeddings, encoder_attention_mask=text.encoder_mask).sample
        if cfg:
            pred_u, pred_c = pred.chunk(2)
            pred = pred_u + guidance * (pred_c - pred_u)
        x = sched.step(pred, t, x, **step_kwargs).prev_sample
    return x


@torch.no_grad()
def generate_batch(
    model: DiffusionModel,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = 25,
    guidance: float = 3.0,
    height: int | None = None,
    width: int | None = None,
    capture: CaptureSpec | None = None,
    negative_prompt: str = "",
) -> GeneratedBatch:
    """Denoise one batch of prompts, one seed each; capture attention per `capture` (None: no capture)."""
    height = height or model.default_size
    width = width or model.default_size
    check_generation_inputs(model, prompts, seeds, height, width, steps, guidance)
    prompts, cfg = list(prompts), guidance > 1.0
    text = guided_text(model, prompts, negative_prompt, cfg)
    f = model.vae_factor
    # One generator per image, for its starting noise and then any noise a stochastic scheduler adds
    # (ancestral, SDE): an image depends on its seed alone, not on the batch it was drawn in.
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    shape = (model.unet.config.in_channels, height // f, width // f)
    latents = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(model.device, model.dtype)
    model.scheduler.set_timesteps(steps, device=model.device)
    latents = latents * model.scheduler.init_noise_sigma
    cond = conditional_rows(text, len(prompts), cfg)
    if capture is None:
        out, captured = denoise(model, latents, text, guidance, generators, None), None
    else:
        with capture_attention(model.unet, capture) as captured:
            out = denoise(model, latents, text, guidance, generators, captured)
            if capture.timestep is not None:  # the learned decoder's features, at the timestep it was trained at
                timestep_pass(model, captured, out, cond, seeds)
    if model.vae is not None:
        out = model.vae.decode(out / model.vae.config.scaling_factor).sample
    images = ((out.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return GeneratedBatch(images, prompts, [int(s) for s in seeds], cond.input_ids.cpu(), captured)


def generate_samples(
    model: DiffusionModel,
    specs: Sequence[PromptSpec],
    pipeline: AnnotationPipeline,
    batch_size: int = 8,
    steps: int = 25,
    guidance: float = 3.0,
    height: int | None = None,
    width: int | None = None,
) -> Iterator[Sample]:
    """Generate every prompt spec, batch by batch, and annotate each image with `pipeline`; yield Samples."""
    from synthaug import __version__
    from synthaug.annotators import fit_annotator

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    specs = list(specs)
    if not specs:
        raise ValueError("prompts is empty: give at least one prompt")
    # Every class word must be in its prompt, and the annotator fit the model, before any model work.
    # (Only the cheap fit: callers check vocabulary and decoder once, with prepare_annotator, not per batch.)
    groups = [spec.token_groups(model.tokenizer) for spec in specs]
    annotator = pipeline.annotator
    fit_annotator(annotator, model.unet)
    fingerprint = {
        **model.fingerprint(),
        "steps": steps,
        "guidance": guidance,
        "annotator": annotator.name,
        "annotator_params": _params_of(annotator),
        "refine": pipeline.refine,
        "refine_params": pipeline.refine_params,
        "synthaug": __version__,
    }
    for b in range(0, len(specs), batch_size):
        chunk = specs[b : b + batch_size]
        out = generate_batch(
            model,
            [s.text for s in chunk],
            [s.seed for s in chunk],
            steps=steps,
            guidance=guidance,
            height=height,
            width=width,
            capture=annotator.capture,
        )
        for i, spec in enumerate(chunk):
            image = out.images[i]
            done = pipeline(out.captured, i, image, groups[b + i], [t.class_id for t in spec.targets])
            yield Sample(
                image=image,
                mask=done.mask,
                instances=done.instances,
                prompt=spec.text,
                seed=spec.seed,
                quality=done.quality,
                fingerprint=fingerprint,
            )


def _params_of(annotator: Annotator) -> dict[str, Any]:
    params = getattr(annotator, "params", None)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()} if params else {}

"""Load a local diffusers text-to-image pipeline and generate with it, batch by batch.

diffusers' own pipeline runs the denoising loop (``DiffusionPipeline.from_pretrained`` from a
local folder; nothing is downloaded). synthaug sets capturing attention processors on the
pipeline's denoiser (``synthaug.attention``) and marks a step at each denoiser call,
so Stable Diffusion, SDXL and synthaug's pixel-space toy model (a StableDiffusionPipeline
without a VAE) all take one path. ``synthaug.pipelines`` says which pipeline classes are supported.
"""

from __future__ import annotations

import importlib
import inspect
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from synthaug.annotators.base import Annotator
from synthaug.attention import CapturedAttention, CaptureSpec, capture_attention, token_factor_of
from synthaug.features import timestep_pass
from synthaug.pipelines import (
    Architecture,
    UnsupportedPipelineError,
    absent_components,
    architecture_of,
    key_lengths,
    read_index,
)
from synthaug.prompts import PromptSpec, WordNotInPromptError, words_positions
from synthaug.sample import Sample
from synthaug.text import TEXT_MASK_POLICIES, encode_text, tokenize

if TYPE_CHECKING:
    from synthaug.annotators.pipeline import AnnotationPipeline
    from synthaug.layout import LayoutSettings

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
    """A local text-to-image diffusers pipeline, plus how synthaug reads it.

    `pipe` runs the denoising loop (its own ``__call__``); `arch` says where its denoiser is and how
    the prompt's tokens map to cross-attention keys; `tokenizer` is a fast tokenizer of those keys
    (character offsets map class words to tokens)."""

    path: Path | None
    pipe: Any
    arch: Architecture
    tokenizers: list[Any]
    text_mask_policy: str = "all"
    card: dict[str, Any] = field(default_factory=dict)
    loras: list[LoraWeights] = field(default_factory=list)

    @property
    def tokenizer(self) -> Any:
        """The (fast) tokenizer of the first block of cross-attention keys."""
        return self.tokenizers[0]

    def token_groups(self, spec: PromptSpec) -> list[list[int]]:
        """Cross-attention key positions of each of `spec`'s targets: every block of keys the denoiser reads
        (SD3: CLIP's, then T5's, offset by CLIP's length) and every piece a tokenizer splits a word into.

        Raises ValueError naming the prompt if it is longer than the last (longest) block takes; an earlier
        block (SD3's CLIP, 77 tokens, before T5's 256) may cut it off, as the pipeline does: a word past its
        end is then read from the later block only."""
        text = spec.text.lower() if self.arch.lowercases_prompt else spec.text
        groups: list[list[int]] = [[] for _ in spec.targets]
        lengths = key_lengths(self.arch, self.tokenizers)
        offset = 0
        for part, (tok, length) in enumerate(zip(self.tokenizers, lengths)):
            last = part == len(lengths) - 1
            n = len(tok(text, truncation=False, verbose=False).input_ids)
            if n > length and last:
                raise ValueError(
                    f"the prompt {spec.text!r} is {n} tokens long for {type(tok).__name__}, which takes {length}: "
                    "shorten it (the tokens past the limit would be cut off unseen)"
                )
            bounded = TokenLimit(tok, length)
            for group, target in zip(groups, spec.targets):
                try:
                    found = words_positions(bounded, text, target.words, target.occurrence)
                except WordNotInPromptError:
                    if last or n <= length:
                        raise
                    found = []  # cut off in this block; the last block has it
                group.extend(offset + i for i in found)
            offset += length
        return groups

    @property
    def unet(self) -> Any:
        """The pipeline's denoiser (``unet`` or ``transformer``)."""
        return getattr(self.pipe, self.arch.denoiser)

    @property
    def text_encoder(self) -> Any:
        return self.pipe.text_encoder

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    @property
    def vae(self) -> Any | None:
        return getattr(self.pipe, "vae", None)

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
        sample = getattr(self.unet.config, "sample_size", None) or getattr(self.pipe, "default_sample_size", 128)
        return int(self.card.get("resolution") or sample * self.vae_factor)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies this model's samples: path, pipeline, scheduler and the text mask policy."""
        name = self.path.name if self.path is not None else type(self.pipe).__name__
        return {
            "model": str(self.path) if self.path is not None else f"<{type(self.pipe).__name__} object>",
            "model_name": self.card.get("name", name),
            "pipeline": type(self.pipe).__name__,
            "scheduler": type(self.scheduler).__name__,
            "text_mask_policy": self.text_mask_policy,
            **({"lora": [{"path": str(w.path), "scale": w.scale} for w in self.loras]} if self.loras else {}),
        }


@dataclass(frozen=True)
class LoraWeights:
    """A local LoRA file and the scale it is applied at."""

    path: Path
    scale: float = 1.0


SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")  # as diffusers tells them apart: lower case


def model_source(path: str | Path | None, config: str | Path | None = None) -> tuple[Path | None, Path]:
    """(single-file checkpoint or None, the diffusers folder whose configs describe the model).

    A folder is the model. A single file (original Stable Diffusion layout, `.safetensors` or `.ckpt`) needs
    `config`: a local diffusers folder of the same architecture, whose configs, tokenizers and scheduler are
    read (not its weights), since nothing is downloaded."""
    path = Path(path) if path is not None else default_model_path()
    if path.suffix in SINGLE_FILE_SUFFIXES and not path.exists():
        raise FileNotFoundError(f"model {path}: no such checkpoint file")
    if not path.is_file():
        if config is not None:
            raise ValueError(
                f"model_config {config} is set, but model {path} is a folder: model_config is only for a "
                "single-file checkpoint; remove it"
            )
        return None, path
    if path.suffix not in SINGLE_FILE_SUFFIXES:
        raise ValueError(
            f"model {path} is a file but not a single-file checkpoint ({', '.join(SINGLE_FILE_SUFFIXES)}, lower "
            "case): give a diffusers model folder, or a .safetensors / .ckpt checkpoint with model_config"
        )
    if config is None or not (Path(config) / "model_index.json").is_file():
        raise ValueError(
            f"model {path} is a single-file checkpoint: set model_config (gen.yaml) or --model-config to a local "
            f"diffusers folder of its architecture with its model_index.json (e.g. the base model's snapshot), got "
            f"{config!r}. Its configs, tokenizers and scheduler are read, not its weights; nothing is downloaded"
        )
    return path, Path(config)


def load_model(
    path: str | Path | Any | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    scheduler: str | None = None,
    loras: Sequence[LoraWeights] = (),
    config: str | Path | None = None,
) -> DiffusionModel:
    """Load a local diffusers text-to-image folder with ``DiffusionPipeline.from_pretrained``, a single-file
    checkpoint with the pipeline class's ``from_single_file`` and `config` (model_source), or wrap a pipeline
    object a Python user passes; nothing is downloaded.

    The pipeline class is checked against the supported kinds before any weights load.
    fp16 is used on CUDA unless `dtype` says otherwise; the CPU runs fp32. `loras` are loaded with the
    pipeline's own LoRA loader (diffusers + peft) and applied at their scales.
    """
    if path is not None and not isinstance(path, (str, Path)):
        return wrap_pipeline(path, scheduler=scheduler, loras=loras)
    single, path = model_source(path, config)
    index = read_index(path)
    arch = architecture_of(index.get("_class_name", "?"), f"model {path}")
    missing = [c for c in (arch.denoiser, *arch.key_tokenizers, "scheduler") if not (index.get(c) or [None])[0]]
    if missing:
        raise ValueError(f"model {path} lacks components {missing}; a {index['_class_name']} needs them")
    from diffusers import DiffusionPipeline

    device = torch.device(device)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    absent = {name: None for name in absent_components(index)}
    with warnings.catch_warnings():
        # Pipelines warn (printing the whole config) about scheduler settings they then override; the
        # folder's own scheduler is put back below, so the warning is noise.
        warnings.simplefilter("ignore", FutureWarning)
        if single is None:
            pipe = DiffusionPipeline.from_pretrained(
                path, torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False, **absent
            )
        else:
            pipe = load_single_file(single, path, index["_class_name"], dtype, absent)
        library, cls_name = index["scheduler"]
        own = getattr(importlib.import_module(library), cls_name).from_pretrained(path, subfolder="scheduler")
    pipe.scheduler = own
    pipe.to(device)
    card_file = path / SYNTHAUG_MODEL_FILE
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    return wrap_pipeline(pipe, path=single or path, card=card, scheduler=scheduler, loras=loras, config=path)


def load_single_file(checkpoint: Path, config: Path, class_name: str, dtype: torch.dtype, absent: dict) -> Any:
    """`class_name`.from_single_file(checkpoint) with `config`'s configs; an error naming both if they do not fit."""
    import diffusers

    cls = getattr(diffusers, class_name)
    if not hasattr(cls, "from_single_file"):
        raise ValueError(
            f"model_config {config} is a {class_name}, which diffusers cannot load from a single file: use a "
            "diffusers model folder"
        )
    parts = dict(absent)
    if (config / "controlnet").is_dir():  # a ControlNet is its own model: the folder's, beside the file's base
        parts["controlnet"] = diffusers.ControlNetModel.from_pretrained(
            config / "controlnet", torch_dtype=dtype, local_files_only=True
        )
    try:
        return cls.from_single_file(
            str(checkpoint), config=str(config), torch_dtype=dtype, local_files_only=True, **parts
        )
    except Exception as err:  # diffusers' own message (missing component, shapes), with both files named
        hint = ""
        if checkpoint.suffix == ".ckpt" and "Unable to load weights" in str(err):
            hint = (
                " (a .ckpt is read with torch.load(weights_only=True): pickled objects other than tensors, such as "
                "training state, are not unpickled, for safety; convert the file to .safetensors)"
            )
        raise ValueError(
            f"single-file checkpoint {checkpoint} does not load as the {class_name} that model_config {config} "
            f"describes{hint}: {type(err).__name__}: {err}"
        ) from None


def wrap_pipeline(
    pipe: Any,
    path: Path | None = None,
    card: dict[str, Any] | None = None,
    scheduler: str | None = None,
    loras: Sequence[LoraWeights] = (),
    config: Path | None = None,
) -> DiffusionModel:
    """A DiffusionModel around a loaded pipeline object; UnsupportedPipelineError names its class otherwise.
    `path` is where its weights came from; `config` the folder with its tokenizer files (default: `path`)."""
    arch = architecture_of(type(pipe).__name__, f"the pipeline object {type(pipe).__name__}")
    card = card or {}
    if path is None:
        name = getattr(getattr(pipe, "config", None), "_name_or_path", None)
        path = Path(name) if name else None
    if scheduler is not None:
        pipe.scheduler = resolve_scheduler_class(scheduler).from_config(pipe.scheduler.config)
    policy = card.get("text_mask_policy", "all")
    if policy not in TEXT_MASK_POLICIES:
        raise ValueError(
            f"{SYNTHAUG_MODEL_FILE}: text_mask_policy={policy!r} is unknown; use one of {TEXT_MASK_POLICIES}"
        )
    for name in (arch.denoiser, "text_encoder", "text_encoder_2", "vae"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False).eval()
    pipe.set_progress_bar_config(disable=True)
    load_loras(pipe, loras)
    folder = config or (path if path is not None and path.is_dir() else None)
    tokenizers = [fast_tokenizer(getattr(pipe, name), folder, name) for name in arch.key_tokenizers]
    return DiffusionModel(path, pipe, arch, tokenizers, policy, card, list(loras))


LORA_PREFIX = "synthaug_lora_"


def load_loras(pipe: Any, loras: Sequence[LoraWeights]) -> None:
    """Load each LoRA file with the pipeline's own loader (``load_lora_weights``) as its own adapter, and
    apply them at their scales. Adapters an earlier load_model put on the same pipeline object are removed
    first, and all of this call's are removed again if one fails, so the pipeline is never left half-changed.
    Errors name the file: a missing one, a missing ``peft``, a pipeline without a LoRA loader, adapters of
    the user's own already active (they would be switched off unseen), or weights that do not fit the model
    (the loader's own message)."""
    ours = {n for names in safe_adapters(pipe).values() for n in names if n.startswith(LORA_PREFIX)}
    if ours:
        pipe.delete_adapters(sorted(ours))
    if not loras:
        return
    import importlib.util

    if importlib.util.find_spec("peft") is None:
        raise ImportError(f"LoRA {loras[0].path} needs peft: pip install 'synthaug[lora]'")
    if not hasattr(pipe, "load_lora_weights"):
        raise ValueError(f"LoRA {loras[0].path}: {type(pipe).__name__} has no LoRA loader in diffusers")
    theirs = sorted({n for names in safe_adapters(pipe).values() for n in names})
    if theirs:
        raise ValueError(
            f"LoRA {loras[0].path}: the pipeline already has LoRA adapters {theirs}, which synthaug would switch "
            "off unseen: fuse them into the weights (pipe.fuse_lora(); pipe.unload_lora_weights()) or give every "
            "LoRA through `loras`"
        )
    names: list[str] = []
    try:
        for i, lora in enumerate(loras):
            path = Path(lora.path)
            if not path.is_file():
                raise FileNotFoundError(f"LoRA file {path} does not exist: give a local .safetensors file")
            name = f"{LORA_PREFIX}{i}"
            names.append(name)
            try:
                pipe.load_lora_weights(
                    str(path.parent), weight_name=path.name, adapter_name=name, local_files_only=True
                )
            except Exception as err:  # the loader's own error (shapes, keys, format), with the file named
                raise ValueError(f"LoRA {path} does not fit this {type(pipe).__name__}: {err}") from err
            if not any(name in adapters for adapters in safe_adapters(pipe).values()):
                # diffusers only warns when no key names a module of the pipeline: it would silently do nothing
                raise ValueError(
                    f"LoRA {path} does not fit this {type(pipe).__name__}: none of its weights names one of the "
                    "pipeline's modules (a LoRA made for another architecture?)"
                )
        pipe.set_adapters(names, adapter_weights=[float(lora.scale) for lora in loras])
    except BaseException:
        loaded = {n for adapters in safe_adapters(pipe).values() for n in adapters} & set(names)
        if loaded:
            pipe.delete_adapters(sorted(loaded))
        raise


def safe_adapters(pipe: Any) -> dict[str, list[str]]:
    """{component: adapter names} of the pipeline's LoRA adapters ({} without peft or adapters)."""
    try:
        return pipe.get_list_adapters()
    except (ImportError, ValueError, AttributeError):
        return {}


def fast_tokenizer(tokenizer: Any, path: Path | None, subfolder: str) -> Any:
    """`tokenizer` if it is fast (it gives character offsets), else the fast twin of its files."""
    if getattr(tokenizer, "is_fast", False):
        return tokenizer
    from transformers import AutoTokenizer

    source = path / subfolder if path is not None and (path / subfolder).is_dir() else tokenizer.name_or_path
    return AutoTokenizer.from_pretrained(source, use_fast=True)


class TokenLimit:
    """A tokenizer seen with another maximum length (a pipeline pads T5 to its own sequence length)."""

    def __init__(self, tokenizer: Any, length: int) -> None:
        self.tokenizer, self.model_max_length = tokenizer, length

    def __call__(self, text: str, **kwargs: Any) -> Any:
        return self.tokenizer(text, **{**kwargs, "max_length": self.model_max_length})


@dataclass
class GeneratedBatch:
    """Images (B, H, W, 3) uint8, the prompts and seeds, token ids, and the attention captured if captured."""

    images: np.ndarray
    prompts: list[str]
    seeds: list[int]
    input_ids: torch.Tensor
    captured: CapturedAttention | None


def size_multiple(denoiser_config: dict[str, Any], vae_config: dict[str, Any] | None) -> int:
    """Heights and widths must be multiples of this: the VAE factor times the UNet's downsampling, or
    times a transformer's patch (FLUX packs 2x2 latent cells into a token)."""
    vae_factor = 2 ** (len(vae_config["block_out_channels"]) - 1) if vae_config else 1
    if "down_block_types" in denoiser_config:
        return vae_factor * 2 ** (len(denoiser_config["block_out_channels"]) - 1)
    return vae_factor * token_factor_of(str(denoiser_config.get("_class_name", "")), denoiser_config.get("patch_size"))


def check_size(multiple: int, height: int | None, width: int | None) -> None:
    """Raise ValueError naming height/width, the rule and a value that works."""
    for name, value in (("height", height), ("width", width)):
        if value is not None and (value <= 0 or value % multiple):
            raise ValueError(
                f"{name}={value} must be a positive multiple of {multiple} (the VAE factor times the denoiser's "
                f"downsampling or patch size); try {max(multiple, round(value / multiple) * multiple)}"
            )


def check_model_before_load(
    path: str | Path | None,
    height: int | None,
    width: int | None,
    layout: bool = False,
    config: str | Path | None = None,
) -> None:
    """What can be checked of a model from its config files alone, before anything is created or loaded: a
    single file's `config` folder (model_source), that it is a supported pipeline (naming its class and the
    supported kinds if not), that it takes layouts if and only if `layout` is set, and the size rule of
    `check_generation_inputs`."""
    _, path = model_source(path, config)
    index_file = path / "model_index.json"
    if not index_file.is_file():
        return  # load_model will say what is missing
    index = json.loads(index_file.read_text())
    arch = architecture_of(index.get("_class_name", "?"), f"model {path}")
    check_layout_fits(arch, layout, f"model {path} ({index.get('_class_name')})")
    denoiser_file, vae_file = path / arch.denoiser / "config.json", path / "vae" / "config.json"
    if not denoiser_file.is_file():
        return  # load_model will say what is wrong
    has_vae = bool(index.get("vae") and index["vae"][0]) and vae_file.is_file()
    vae_cfg = json.loads(vae_file.read_text()) if has_vae else None
    check_size(size_multiple(json.loads(denoiser_file.read_text()), vae_cfg), height, width)


def check_layout_fits(arch: Architecture, layout: bool, where: str) -> None:
    """A ControlNet pipeline needs layouts (gen.yaml `layout`), and layouts need a ControlNet pipeline."""
    if arch.control and not layout:
        raise ValueError(
            f"{where} is a ControlNet pipeline: each image is laid out by a control image. Set the gen.yaml key "
            "'layout' (masks: a folder of label PNGs; see synthaug.layout), or use the model without its ControlNet"
        )
    if layout and not arch.control:
        raise ValueError(
            f"gen.yaml key 'layout' needs a ControlNet pipeline (StableDiffusionControlNetPipeline or "
            f"StableDiffusionXLControlNetPipeline); {where} is not one: remove 'layout' or give a ControlNet model"
        )


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


def step_callback(pipe: Any, step_done: Callable[[int, torch.Tensor], None]) -> dict[str, Any]:
    """The pipeline's own step callback, calling `step_done(step index, latents)` after each step:
    ``callback_on_step_end`` where the pipeline has it, else the older ``callback`` (PixArt)."""
    params = inspect.signature(pipe.__call__).parameters
    if "callback_on_step_end" in params:

        def on_step_end(_pipe, i: int, _t, tensors: dict[str, Any]) -> dict[str, Any]:
            step_done(i, tensors["latents"])
            return {}

        return {"callback_on_step_end": on_step_end}
    if "callback" in params:
        return {"callback": lambda i, _t, latents: step_done(i, latents), "callback_steps": 1}
    raise UnsupportedPipelineError(
        f"{type(pipe).__name__}.__call__ has no step callback: synthaug cannot follow its steps"
    )


@contextmanager
def denoiser_inputs(
    model: DiffusionModel, rows: list[str], before_call: Callable[[], None] | None = None
) -> Iterator[None]:
    """Check that each denoiser call has the batch rows expected (`rows`: the negative prompts first under
    classifier-free guidance, then the prompts), so captured rows are the prompts' and no other; apply
    the model card's text mask policy; and call `before_call()` before each denoiser call.

    A model trained to see only some of the prompt's tokens (the toy model: start token and words) must
    see only those when sampled; diffusers pipelines pass no encoder mask, so this forward pre-hook on the
    denoiser adds it."""
    keep = None
    if model.text_mask_policy != "all":
        ids, attn = tokenize(model.pipe.tokenizer, rows)
        keep = attn.bool() & (ids != model.pipe.tokenizer.eos_token_id)

    def check(module, args, kwargs):
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        if x is not None and x.shape[0] != len(rows):
            raise RuntimeError(
                f"{type(model.pipe).__name__} ran its denoiser on {x.shape[0]} rows where synthaug expected "
                f"{len(rows)} (negative prompts first under guidance, then the prompts): captured maps would "
                "be of the wrong rows"
            )
        if keep is not None:
            ctx = kwargs.get("encoder_hidden_states", args[2] if len(args) > 2 else None)
            kwargs["encoder_attention_mask"] = keep.to(ctx.device, ctx.dtype)
        if before_call is not None:
            before_call()
        return args, kwargs

    handle = model.unet.register_forward_pre_hook(check, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


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
    control: Sequence[np.ndarray] | None = None,
    control_scale: float = 1.0,
) -> GeneratedBatch:
    """Run the pipeline on one batch of prompts, one seed each; capture attention per `capture` (None: none).
    A ControlNet pipeline takes one control image per prompt, (H, W, 3) uint8 (synthaug.layout), at
    `control_scale`.

    The pipeline's own ``__call__`` denoises; capture is processors set on its denoiser, a step is marked at
    each denoiser call, and the step callback keeps the final latents. One generator per image, for its starting noise and any noise a
    stochastic sampler adds: an image depends on its seed alone, not on the batch it was drawn in."""
    height = height or model.default_size
    width = width or model.default_size
    check_generation_inputs(model, prompts, seeds, height, width, steps, guidance)
    prompts, n = list(prompts), len(prompts)
    cfg = guidance > 1.0 and model.arch.guidance_batch
    pipe = model.pipe
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    call: dict[str, Any] = {
        **model.arch.options(),
        "prompt": prompts,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "height": height,
        "width": width,
        "generator": generators,
        # Pixel space: the latents are the image. (A pipeline sizes latents for a VAE; without one, give them.)
        "output_type": "pt" if model.vae is not None else "latent",
    }
    if negative_prompt:  # else each pipeline's own default (SDXL: zeros for an empty negative prompt)
        call["negative_prompt"] = [negative_prompt] * n
    check_layout_fits(model.arch, control is not None, type(pipe).__name__)
    if control is not None:
        from PIL import Image

        if len(control) != n or any(c.shape != (height, width, 3) for c in control):
            raise ValueError(
                f"control: give one ({height}, {width}, 3) image per prompt, got {[c.shape for c in control]} "
                f"for {n} prompts"
            )
        call["image"] = [Image.fromarray(np.ascontiguousarray(c)) for c in control]
        call["controlnet_conditioning_scale"] = float(control_scale)
    f = model.vae_factor
    if model.vae is None:
        shape = (model.unet.config.in_channels, height, width)
        call["latents"] = torch.stack([torch.randn(shape, generator=g) for g in generators]).to(
            model.device, model.dtype
        )
    final: dict[str, torch.Tensor] = {}
    calls = [0]

    def before_call() -> None:
        # Steps are the denoiser's calls, one per entry of the timesteps the pipeline has set on its scheduler
        # by then (Heun-like samplers have more entries than steps; FLUX sets them with its own `mu` shift).
        # The pipeline's callback cannot mark them: PixArt's calls back with i // order, after warm-up only.
        if captured is not None:
            captured.begin_step(calls[0], len(pipe.scheduler.timesteps))
        calls[0] += 1

    def step_done(_i: int, latents: torch.Tensor) -> None:
        final["latents"] = latents  # the last callback, after the last step, leaves the final latents

    call.update(step_callback(pipe, step_done))
    rows = ([negative_prompt] * n if cfg else []) + prompts
    with ExitStack() as stack:
        captured = None
        if capture is not None:
            captured = stack.enter_context(capture_attention(model.unet, capture))
            captured.set_layout((height // f, width // f), slice(n, 2 * n) if cfg else slice(0, n))
        with denoiser_inputs(model, rows, before_call):
            out = pipe(**call).images
        if captured is not None and capture.timestep is not None:
            # the learned decoder's features, at the timestep it was trained at
            cond = encode_text(model.tokenizer, model.text_encoder, prompts, model.text_mask_policy)
            timestep_pass(model, captured, final["latents"], cond, seeds)
    # decoded by the pipeline to [0, 1]; in pixel space the latents themselves, in [-1, 1]
    scaled = out.float().clamp(0, 1) * 255 if model.vae is not None else (out.float().clamp(-1, 1) + 1) * 127.5
    images = scaled.round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    input_ids, _ = tokenize(model.tokenizer, prompts)
    return GeneratedBatch(images, prompts, [int(s) for s in seeds], input_ids, captured)


def generate_samples(
    model: DiffusionModel,
    specs: Sequence[PromptSpec],
    pipeline: AnnotationPipeline,
    batch_size: int = 8,
    steps: int = 25,
    guidance: float = 3.0,
    height: int | None = None,
    width: int | None = None,
    layout: LayoutSettings | None = None,
) -> Iterator[Sample]:
    """Generate every prompt spec, batch by batch, and annotate each image with `pipeline`; yield Samples.
    With `layout` (a ControlNet pipeline), each spec's layout (its meta) lays out the image and gives the
    label as `layout.label` says (synthaug.layout)."""
    from synthaug import __version__
    from synthaug.annotators import fit_annotator

    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    specs = list(specs)
    if not specs:
        raise ValueError("prompts is empty: give at least one prompt")
    check_layout_fits(model.arch, layout is not None, type(model.pipe).__name__)
    if layout is not None and any("layout" not in s.meta for s in specs):
        raise ValueError(
            "with a layout every prompt spec needs its layout: make them with synthaug.layout.layout_prompts"
        )
    # Every class word must be in its prompt, and the annotator fit the model, before any model work.
    # (Only the cheap fit: callers check vocabulary and decoder once, with prepare_annotator, not per batch.)
    groups = [layout_token_groups(model, spec) for spec in specs]
    annotator = pipeline.annotator
    fit_annotator(annotator, model.unet)
    capture = annotator.capture if layout is None or layout.capture else None
    fingerprint = {
        **model.fingerprint(),
        "steps": steps,
        "guidance": guidance,
        "annotator": annotator.name if capture is not None else None,
        "annotator_params": _params_of(annotator) if capture is not None else {},
        "refine": pipeline.refine if capture is not None else None,
        "refine_params": pipeline.refine_params if capture is not None else {},
        "synthaug": __version__,
        **(layout.fingerprint() if layout is not None else {}),
    }
    h, w = height or model.default_size, width or model.default_size
    if layout is not None:
        from synthaug.layout import layout_annotation, layout_batch
    for b in range(0, len(specs), batch_size):
        chunk = specs[b : b + batch_size]
        layouts = control = None
        if layout is not None:
            layouts, control = layout_batch(layout, chunk, pipeline.vocabulary, h, w)
        out = generate_batch(
            model,
            [s.text for s in chunk],
            [s.seed for s in chunk],
            steps=steps,
            guidance=guidance,
            height=height,
            width=width,
            capture=capture,
            control=control,
            control_scale=layout.scale if layout is not None else 1.0,
        )
        for i, spec in enumerate(chunk):
            image = out.images[i]
            class_ids = [t.class_id for t in spec.targets]
            done = pipeline(out.captured, i, image, groups[b + i], class_ids) if capture is not None else None
            if layouts is not None:
                assert layout is not None
                found = done.annotation if done is not None else None
                ann, figures = layout_annotation(layouts[i], class_ids, layout.label, found, pipeline.background_id)
                done = pipeline.finish(ann, len(class_ids), figures)
            assert done is not None
            yield Sample(
                image=image,
                mask=done.mask,
                instances=done.instances,
                prompt=spec.text,
                seed=spec.seed,
                quality=done.quality,
                fingerprint=fingerprint,
            )


def layout_token_groups(model: DiffusionModel, spec: PromptSpec) -> list[list[int]]:
    """model.token_groups(spec), with the layout named when its prompt does not fit the tokenizer."""
    try:
        return model.token_groups(spec)
    except ValueError as err:
        if "layout" not in spec.meta:
            raise
        raise ValueError(
            f"layout {spec.meta['layout']}: {err}. Its prompt names each of its classes: use a shorter "
            "layout.template, or leave out layouts with this many classes"
        ) from None


def _params_of(annotator: Annotator) -> dict[str, Any]:
    params = getattr(annotator, "params", None)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(params).items()} if params else {}

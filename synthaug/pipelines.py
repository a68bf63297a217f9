"""Which diffusers pipelines synthaug drives, and what it must know of each to read attention maps.

diffusers' own pipeline runs the denoising loop for every model; synthaug only sets capturing
attention processors on the pipeline's denoiser and marks a step at each of its calls (one per
scheduler timestep). What differs between architectures is kept here, one `Architecture` per kind:
the denoiser's attribute, how the cross-attention keys map to the prompt's tokens, and whether
classifier-free guidance puts the negative prompt's rows first in the denoiser's batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Architecture:
    """How synthaug drives one family of text-to-image pipelines.

    `key_tokenizers` are the pipeline attributes whose tokenizations, in order, make up the denoiser's
    cross-attention keys: SD3 puts its CLIP tokens first and its T5 tokens after them; SDXL concatenates
    its two CLIP encoders along features, not tokens, so its first tokenizer's positions are the keys'.
    `sequence_length` is the T5 length the pipeline pads to (its ``max_sequence_length``), for the last
    part. `guidance_batch`: under classifier-free guidance the denoiser sees the negative prompt's rows
    first, then the prompts' (FLUX is guidance-distilled: no negative rows). `call_options` are passed to
    every call (PixArt would otherwise resize to its aspect-ratio bins and rewrite the caption).
    """

    kind: str
    description: str
    denoiser: str = "unet"
    key_tokenizers: tuple[str, ...] = ("tokenizer",)
    sequence_length: int | None = None
    guidance_batch: bool = True
    call_options: tuple[tuple[str, Any], ...] = ()
    lowercases_prompt: bool = False
    control: bool = False  # a ControlNet pipeline: each image is laid out by a control image (synthaug.layout)

    def options(self) -> dict[str, Any]:
        """Keyword arguments for every pipeline call."""
        out = dict(self.call_options)
        if self.sequence_length is not None:
            out["max_sequence_length"] = self.sequence_length
        return out


SD = Architecture("sd", "Stable Diffusion 1.x/2.x: UNet, one CLIP text encoder; epsilon or v-prediction")
SDXL = Architecture("sdxl", "Stable Diffusion XL: UNet, two CLIP text encoders, added time and text conditions")
_PIXART_OPTIONS = (("use_resolution_binning", False), ("clean_caption", False))
PIXART_ALPHA = Architecture(
    "pixart",
    "PixArt-alpha: a DiT cross-attending to T5 tokens",
    denoiser="transformer",
    sequence_length=120,
    call_options=_PIXART_OPTIONS,
    lowercases_prompt=True,
)
PIXART_SIGMA = Architecture(
    "pixart",
    "PixArt-Sigma: a DiT cross-attending to T5 tokens",
    denoiser="transformer",
    sequence_length=300,
    call_options=_PIXART_OPTIONS,
    lowercases_prompt=True,
)
SD3 = Architecture(
    "sd3",
    "Stable Diffusion 3/3.5: an MMDiT whose joint attention reads CLIP then T5 tokens",
    denoiser="transformer",
    key_tokenizers=("tokenizer", "tokenizer_3"),
    sequence_length=256,
)
FLUX = Architecture(
    "flux",
    "FLUX.1: joint and single-stream blocks over T5 tokens, guidance-distilled",
    denoiser="transformer",
    key_tokenizers=("tokenizer_2",),
    sequence_length=512,
    guidance_batch=False,
)

SD_CONTROLNET = replace(
    SD, kind="sd-controlnet", description="Stable Diffusion 1.x/2.x with a ControlNet: layouts from masks", control=True
)
SDXL_CONTROLNET = replace(
    SDXL, kind="sdxl-controlnet", description="Stable Diffusion XL with a ControlNet: layouts from masks", control=True
)

#: Pipeline class name (model_index.json `_class_name`) -> its architecture.
PIPELINES: dict[str, Architecture] = {
    "StableDiffusionPipeline": SD,
    "StableDiffusionXLPipeline": SDXL,
    "StableDiffusionControlNetPipeline": SD_CONTROLNET,
    "StableDiffusionXLControlNetPipeline": SDXL_CONTROLNET,
    "PixArtAlphaPipeline": PIXART_ALPHA,
    "PixArtSigmaPipeline": PIXART_SIGMA,
    "StableDiffusion3Pipeline": SD3,
    "FluxPipeline": FLUX,
}


class UnsupportedPipelineError(ValueError):
    """The model folder's pipeline is not a text-to-image pipeline synthaug can read attention from."""


def supported_kinds() -> str:
    """One line per supported pipeline class, for error messages."""
    return "; ".join(f"{name} ({arch.description})" for name, arch in PIPELINES.items())


def key_lengths(arch: Architecture, tokenizers: list[Any]) -> list[int]:
    """How many keys each of `arch`'s key tokenizers contributes: the T5 part its sequence length, others
    their tokenizer's length (CLIP's 77)."""
    lengths = [int(t.model_max_length) for t in tokenizers]
    if arch.sequence_length is not None:
        lengths[-1] = arch.sequence_length
    return lengths


def architecture_of(class_name: str, where: str) -> Architecture:
    """The architecture of pipeline class `class_name`; an error naming it and the supported kinds if none."""
    arch = PIPELINES.get(class_name)
    if arch is None:
        raise UnsupportedPipelineError(
            f"{where} is a {class_name}, which synthaug cannot annotate: it needs a text-to-image pipeline whose "
            f"denoiser cross-attends to the prompt. Supported: {supported_kinds()}"
        )
    return arch


def read_index(path: Path) -> dict[str, Any]:
    """The folder's model_index.json; FileNotFoundError saying what a model folder is if it has none."""
    index_file = Path(path) / "model_index.json"
    if not index_file.is_file():
        raise FileNotFoundError(
            f"model path {path} has no model_index.json: give a local diffusers model folder "
            "(e.g. a Stable Diffusion snapshot saved with save_pretrained), or leave --model unset for the toy model"
        )
    return json.loads(index_file.read_text())


def absent_components(index: dict[str, Any]) -> list[str]:
    """Components the folder declares absent (``[null, null]``), passed to from_pretrained as None.

    diffusers drops a null entry it does not consider optional (a pixel-space model has no VAE) and
    then refuses to build the pipeline; naming it None says the absence is meant."""
    return [k for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0] is None]

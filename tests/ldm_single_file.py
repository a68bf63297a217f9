"""An original-format (LDM) single-file checkpoint of a tiny Stable Diffusion folder, made offline for tests.

Users' single-file checkpoints (`.safetensors` from a fine-tuning tool or a model site) hold one state dict
in the original Stable Diffusion layout: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE)
and the text encoders: ``cond_stage_model.transformer.*`` (SD 1.x's CLIP, transformers' names),
``cond_stage_model.model.*`` (SD 2.x's OpenCLIP: ``resblocks``, one fused q/k/v projection) or, for SDXL,
``conditioner.embedders.0.transformer.*`` (CLIP) and ``conditioner.embedders.1.model.*`` (OpenCLIP with its
text projection). This writes that layout from a diffusers folder by the inverse of diffusers' own key
conversion, and checks that diffusers' conversion (``convert_ldm_unet_checkpoint`` and its VAE, CLIP and
OpenCLIP twins) gives back every tensor exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import torch

RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def resnet_key(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{RESNET.get(head, head)}.{tail}"


def ldm_unet(unet) -> dict[str, torch.Tensor]:
    """A UNet2DConditionModel's weights under the original UNet's names (SD 1.x/2.x/XL block layout; SDXL's
    added time and text embedding is ``label_emb``)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = dict(DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"])
    if unet.config.addition_embed_type == "text_time":
        fixed |= DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]
    per = unet.config.layers_per_block
    up_attn = {i for i, t in enumerate(unet.config.up_block_types) if "CrossAttn" in t}
    out = {}
    for key, value in unet.state_dict().items():
        if key in fixed:
            name = fixed[key]
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            i = 1 + b * (per + 1) + j
            name = f"input_blocks.{i}.0.{resnet_key(rest)}" if kind == "resnets" else f"input_blocks.{i}.1.{rest}"
        elif m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            name = f"input_blocks.{1 + int(m[1]) * (per + 1) + per}.0.op.{m[2]}"
        elif m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", key):
            name = f"middle_block.{2 * int(m[1])}.{resnet_key(m[2])}"
        elif m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
            name = f"middle_block.1.{m[1]}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
            b, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
            i = b * (per + 1) + j
            name = f"output_blocks.{i}.0.{resnet_key(rest)}" if kind == "resnets" else f"output_blocks.{i}.1.{rest}"
        elif m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            b = int(m[1])
            name = f"output_blocks.{b * (per + 1) + per}.{2 if b in up_attn else 1}.conv.{m[2]}"
        else:
            raise KeyError(f"no original name for UNet key {key}")
        out["model.diffusion_model." + name] = value
    return out


def ldm_vae(vae) -> dict[str, torch.Tensor]:
    """An AutoencoderKL's weights under the original VAE's names (attention projections as 1x1 convolutions)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["vae"]
    ups = len(vae.config.up_block_types)
    out = {}
    for key, value in vae.state_dict().items():
        if key in fixed:
            name = fixed[key]
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            name = f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
            name = f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
            name = f"decoder.up.{ups - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
            name = f"decoder.up.{ups - 1 - int(m[1])}.upsample.conv.{m[2]}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
            name = f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
        elif m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key):
            name = f"{m[1]}.mid.attn_1.{VAE_ATTENTION[m[2]]}.{m[3]}"
            if m[3] == "weight" and value.ndim == 2:
                value = value[:, :, None, None]
        else:
            raise KeyError(f"no original name for VAE key {key}")
        out["first_stage_model." + name] = value
    return out


def text_model_prefix(encoder) -> str:
    """ "text_model." where transformers 5.6+ flattened CLIPTextModel (its keys lack what original files name)."""
    return "" if hasattr(encoder, "text_model") else "text_model."


def ldm_clip(encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text encoder under transformers' own names, as SD 1.x and SDXL's first encoder store it."""
    inner = text_model_prefix(encoder)
    return {f"{prefix}{inner}{k}": v for k, v in encoder.state_dict().items()}


OPEN_CLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def ldm_open_clip(encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text encoder under OpenCLIP's names (SD 2.x, SDXL's second encoder): ``resblocks``, the q, k and
    v projections fused into ``attn.in_proj_*``, and the text projection stored transposed."""
    state = {k.removeprefix("text_model."): v for k, v in encoder.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif key == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif m := re.fullmatch(r"final_layer_norm\.(weight|bias)", key):
            out[f"ln_final.{m[1]}"] = value
        elif key == "text_projection.weight":
            out["text_projection"] = value.T
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", key):
            if m[2] == "q":  # written once, from all three
                fused = [state[f"encoder.layers.{m[1]}.self_attn.{p}_proj.{m[3]}"] for p in "qkv"]
                out[f"transformer.resblocks.{m[1]}.attn.in_proj_{m[3]}"] = torch.cat(fused)
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(.+)", key):
            out[f"transformer.resblocks.{m[1]}.attn.out_proj.{m[2]}"] = value
        elif m := re.fullmatch(r"encoder\.layers\.(\d+)\.(layer_norm[12]|mlp\.fc[12])\.(.+)", key):
            out[f"transformer.resblocks.{m[1]}.{OPEN_CLIP[m[2]]}.{m[3]}"] = value
        else:
            raise KeyError(f"no OpenCLIP name for text encoder key {key}")
    return {prefix + k: v for k, v in out.items()}


def save_ldm_checkpoint(folder: Path, out: Path, text: Literal["clip", "open_clip"] | None = None) -> Path:
    """Write the folder's UNet, VAE and text encoders as one original-format safetensors file, after checking
    that diffusers' own conversion gives back each component's weights exactly. `text`: how a single encoder is
    stored, "clip" (SD 1.x, the default) or "open_clip" (SD 2.x); a folder with two (SDXL) is written as SDXL
    stores them, and takes no `text`."""
    if text not in (None, "clip", "open_clip"):
        raise ValueError(f"text={text!r}: 'clip' (SD 1.x) or 'open_clip' (SD 2.x)")
    from diffusers import DiffusionPipeline
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )
    from safetensors.torch import save_file

    def open_clip_back(encoder, prefix: str) -> dict[str, torch.Tensor]:
        inner = text_model_prefix(encoder)
        return {k.removeprefix(inner): v for k, v in convert_open_clip_checkpoint(encoder, state, prefix).items()}

    pipe = DiffusionPipeline.from_pretrained(folder)
    state = {**ldm_unet(pipe.unet), **ldm_vae(pipe.vae)}
    first = text_model_prefix(pipe.text_encoder)
    second = getattr(pipe, "text_encoder_2", None)
    if second is not None:
        if text is not None:
            raise ValueError(f"{folder} has two text encoders (SDXL): their layout is SDXL's, leave text out")
        state |= ldm_clip(pipe.text_encoder, "conditioner.embedders.0.transformer.")
        state |= ldm_open_clip(second, "conditioner.embedders.1.model.")
        encoders = [
            ({k.removeprefix(first): v for k, v in convert_ldm_clip_checkpoint(state).items()}, pipe.text_encoder),
            (open_clip_back(second, "conditioner.embedders.1.model."), second),
        ]
    elif text == "open_clip":
        state |= ldm_open_clip(pipe.text_encoder, "cond_stage_model.model.")
        encoders = [(open_clip_back(pipe.text_encoder, "cond_stage_model.model."), pipe.text_encoder)]
    else:
        state |= ldm_clip(pipe.text_encoder, "cond_stage_model.transformer.")
        encoders = [
            ({k.removeprefix(first): v for k, v in convert_ldm_clip_checkpoint(state).items()}, pipe.text_encoder)
        ]
    for got, want in (
        (convert_ldm_unet_checkpoint(state, pipe.unet.config), pipe.unet.state_dict()),
        (convert_ldm_vae_checkpoint(state, pipe.vae.config), pipe.vae.state_dict()),
        *((got, encoder.state_dict()) for got, encoder in encoders),
    ):
        assert got.keys() == want.keys(), sorted(set(got) ^ set(want))[:5]
        assert all(torch.equal(got[k], want[k]) for k in want)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out

"""An original-format (LDM) single-file checkpoint of a tiny Stable Diffusion folder, made offline for tests.

Users' single-file checkpoints (`.safetensors` from a fine-tuning tool or a model site) hold one state dict
in the original Stable Diffusion layout: ``model.diffusion_model.*`` (UNet), ``first_stage_model.*`` (VAE)
and ``cond_stage_model.transformer.*`` (CLIP). This writes that layout from a diffusers folder by the
inverse of diffusers' own key conversion, and checks that diffusers' conversion
(``convert_ldm_unet_checkpoint`` and its VAE and CLIP twins) gives back every tensor exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

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
    """A UNet2DConditionModel's weights under the original UNet's names (SD 1.x/2.x block layout)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    fixed = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
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


def save_ldm_checkpoint(folder: Path, out: Path) -> Path:
    """Write the SD folder's UNet, VAE and CLIP text encoder as one original-format safetensors file, after
    checking that diffusers' own conversion gives back each component's weights exactly."""
    from diffusers import DiffusionPipeline
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )
    from safetensors.torch import save_file

    pipe = DiffusionPipeline.from_pretrained(folder)
    state = {**ldm_unet(pipe.unet), **ldm_vae(pipe.vae)}
    # the original file names CLIP's weights under text_model. (transformers 5.6+ flattened CLIPTextModel)
    inner = "" if hasattr(pipe.text_encoder, "text_model") else "text_model."
    clip = {f"cond_stage_model.transformer.{inner}{k}": v for k, v in pipe.text_encoder.state_dict().items()}
    state |= clip
    clip_back = {k.removeprefix(inner): v for k, v in convert_ldm_clip_checkpoint(clip).items()}
    for got, want in (
        (convert_ldm_unet_checkpoint(state, pipe.unet.config), pipe.unet.state_dict()),
        (convert_ldm_vae_checkpoint(state, pipe.vae.config), pipe.vae.state_dict()),
        (clip_back, pipe.text_encoder.state_dict()),
    ):
        assert got.keys() == want.keys(), sorted(set(got) ^ set(want))[:5]
        assert all(torch.equal(got[k], want[k]) for k in want)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(out))
    return out

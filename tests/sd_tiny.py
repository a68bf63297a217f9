"""A tiny Stable Diffusion folder made offline: random weights, real diffusers/transformers classes.

UNet2DConditionModel + AutoencoderKL (4 blocks: VAE factor 8, as SD) + CLIPTextModel + a CLIP BPE
tokenizer whose vocabulary is written here, saved with StableDiffusionPipeline.save_pretrained:
the same folder layout as a Stable Diffusion 1.5 snapshot, loadable through `--model PATH`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map of bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


WORDS = ["a", "photo", "of", "cat", "dog", "and", "the", "in", "room", "motorcycle"]


def tiny_clip_tokenizer(folder: Path, pad_token: str | None = None):
    """A CLIP byte-level BPE tokenizer over a few words, written to `folder` (max length 16).

    Every byte char, with and without the end-of-word marker, plus merges for WORDS; "motorcycle"
    has no merge chain to one token, so it splits into several (as rare words do in CLIP)."""
    from transformers import CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = list(bytes_to_unicode().values())
    vocab_list = chars + [c + "</w>" for c in chars]
    merges = []
    for w in WORDS[:-1]:
        pieces = [*w[:-1], w[-1] + "</w>"]
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
            vocab_list.append(pieces[0])
    merges += ["m o", "mo t", "mot o", "c y", "cy c", "cyc l", "cycl e</w>"]
    vocab_list += ["mo", "mot", "moto", "cy", "cyc", "cycl", "cycle</w>"]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(vocab_list))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    extra = {"pad_token": pad_token} if pad_token else {}
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16, **extra)


def tiny_vae(**extra):
    """An AutoencoderKL with 4 blocks: VAE factor 8, as SD's (`extra`: SD3/FLUX's shift and scaling)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        **extra,
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=4,
        sample_size=64,
    )


def tiny_unet(**config):
    """A UNet2DConditionModel of two blocks (32 and 64 channels, one layer each) on 8x8 latents; `config` gives
    the rest (which blocks attend, heads, text width and the SD 2/XL options)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        **config,
    )


def make_tiny_sd(path: Path) -> Path:
    from synthaug.random_sd import clip_text_encoder, save_sd_folder

    torch.manual_seed(0)
    path = Path(path)
    tokenizer = tiny_clip_tokenizer(path / "_tok_src")
    text_encoder = clip_text_encoder(tokenizer, 32, 2, 4, 37, 16)
    unet = tiny_unet(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
    )
    vae = tiny_vae()
    return save_sd_folder(path / "tiny-sd", unet, vae, text_encoder, tokenizer)


def make_tiny_sd2(path: Path) -> Path:
    """SD 2.x's shape: a v-prediction scheduler, linear projections in the transformer blocks, per-block head
    sizes, attention upcast to fp32, and an OpenCLIP-style text encoder (GELU)."""
    from synthaug.random_sd import clip_text_encoder, save_sd_folder

    torch.manual_seed(0)
    path = Path(path)
    tokenizer = tiny_clip_tokenizer(path / "_tok_src", pad_token="!")  # SD 2's tokenizer pads with "!"
    text_encoder = clip_text_encoder(tokenizer, 32, 2, 4, 37, 16, hidden_act="gelu")
    unet = tiny_unet(
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        upcast_attention=True,
    )
    folder = save_sd_folder(path / "tiny-sd2", unet, tiny_vae(), text_encoder, tokenizer)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    return folder


def make_tiny_sdxl(path: Path, width_2: int = 32) -> Path:
    """A tiny SDXL folder: two CLIP text encoders (the second with a projection, for the pooled text) whose
    hidden states are concatenated as the UNet's cross-attention keys, and the added time and text
    conditions, sized as diffusers' own SDXL tests size theirs; saved with StableDiffusionXLPipeline.
    `width_2`: the second encoder's width (SDXL's are 768 and 1280; single files tell them apart by width)."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from synthaug.random_sd import clip_text_encoder

    torch.manual_seed(0)
    path = Path(path)
    tokenizer = tiny_clip_tokenizer(path / "_tok_src")
    tokenizer_2 = tiny_clip_tokenizer(path / "_tok_src_2", pad_token="!")
    text_encoder = clip_text_encoder(tokenizer, 32, 2, 4, 37, 16)
    config_2 = CLIPTextConfig(
        vocab_size=len(tokenizer_2),
        hidden_size=width_2,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        projection_dim=width_2,
        bos_token_id=tokenizer_2.bos_token_id,
        eos_token_id=tokenizer_2.eos_token_id,
        pad_token_id=tokenizer_2.pad_token_id,
    )
    text_encoder_2 = CLIPTextModelWithProjection(config_2)
    unet = tiny_unet(
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=48 + width_2,  # 6 time ids x 8 + the pooled text
        cross_attention_dim=32 + width_2,  # the two encoders' states side by side
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    pipe = StableDiffusionXLPipeline(
        vae=tiny_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    out = path / ("tiny-sdxl" if width_2 == 32 else f"tiny-sdxl-w{width_2}")
    pipe.save_pretrained(out)
    return out


def tiny_t5_tokenizer(max_length: int = 32):
    """A T5-style sentencepiece (Unigram, "▁" word marker) fast tokenizer over a few words, built offline;
    "motorcycle" splits into "▁motor" + "cycle", as sentencepiece splits rare words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + w, -1.0) for w in WORDS[:-1]] + [("▁motor", -2.0), ("cycle", -2.0)]
    pieces += [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    backend.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return T5TokenizerFast(
        tokenizer_object=backend,
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_ids=0,
        model_max_length=max_length,
    )


def tiny_t5_encoder(tokenizer, width: int = 32):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), d_model=width, d_ff=37, num_layers=2, num_heads=4, d_kv=8, pad_token_id=0
    )
    return T5EncoderModel(config)


def make_tiny_pixart(path: Path) -> Path:
    """A tiny PixArt-alpha folder: a DiT (patch 2) cross-attending to T5 tokens, sized as diffusers' tests."""
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    tokenizer = tiny_t5_tokenizer()
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=32,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    pipe = PixArtAlphaPipeline(
        tokenizer=tokenizer,
        text_encoder=tiny_t5_encoder(tokenizer),
        vae=tiny_vae(),
        transformer=transformer,
        scheduler=DDIMScheduler(),
    )
    pipe.save_pretrained(Path(path) / "tiny-pixart")
    return Path(path) / "tiny-pixart"


def _clip_with_projection(tokenizer, width: int = 32):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=width,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            projection_dim=width,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def make_tiny_sd3(path: Path) -> Path:
    """A tiny SD3 folder: an MMDiT (patch 2) with joint attention over two CLIP encoders' tokens (side by
    side in features, then padded to T5's width) followed by T5's tokens."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(0)
    path = Path(path)
    tokenizer = tiny_clip_tokenizer(path / "_tok_src")
    tokenizer_2 = tiny_clip_tokenizer(path / "_tok_src_2", pad_token="!")
    tokenizer_3 = tiny_t5_tokenizer()
    transformer = SD3Transformer2DModel(
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=64,
        pooled_projection_dim=64,
        out_channels=4,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=_clip_with_projection(tokenizer),
        tokenizer=tokenizer,
        text_encoder_2=_clip_with_projection(tokenizer_2),
        tokenizer_2=tokenizer_2,
        text_encoder_3=tiny_t5_encoder(tokenizer_3, width=64),
        tokenizer_3=tokenizer_3,
    )
    pipe.save_pretrained(path / "tiny-sd3")
    return path / "tiny-sd3"


def make_tiny_flux(path: Path) -> Path:
    """A tiny FLUX.1-dev-like folder: one double-stream and one single-stream block over T5 tokens with
    rotary embeddings, 2x2 latent packing, CLIP's pooled text, and the distilled guidance embedding."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    path = Path(path)
    tokenizer = tiny_clip_tokenizer(path / "_tok_src")
    tokenizer_2 = tiny_t5_tokenizer()
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels x the 2x2 packing
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),
    )
    from synthaug.random_sd import clip_text_encoder

    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=tiny_vae(shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=clip_text_encoder(tokenizer, 32, 2, 4, 37, 16),
        tokenizer=tokenizer,
        text_encoder_2=tiny_t5_encoder(tokenizer_2),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )
    pipe.save_pretrained(path / "tiny-flux")
    return path / "tiny-flux"


def make_tiny_lora(model: Path, out: Path, seed: int = 1) -> Path:
    """A LoRA file for the denoiser of the folder `model`, made as diffusers' own training scripts make
    one (peft adapter on the attention projections, saved with the pipeline's save_lora_weights), with
    random (not zero) up-projections so that it changes the output."""
    from diffusers import DiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = DiffusionPipeline.from_pretrained(model, low_cpu_mem_usage=False)
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False)
    pipe.unet.add_adapter(config)
    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(pipe.unet))
    type(pipe).save_lora_weights(out, unet_lora_layers=state, weight_name="lora.safetensors")
    return Path(out) / "lora.safetensors"


def make_tiny_controlnet(path: Path, xl: bool = False) -> Path:
    """A tiny SD (or SDXL) ControlNet folder: the tiny model's components and a ControlNetModel made from its UNet
    (as diffusers' ControlNetModel.from_unet does for real ones), saved with the ControlNet pipeline class."""
    from diffusers import (
        ControlNetModel,
        DiffusionPipeline,
        StableDiffusionControlNetPipeline,
        StableDiffusionXLControlNetPipeline,
    )

    path = Path(path)
    base = DiffusionPipeline.from_pretrained(make_tiny_sdxl(path) if xl else make_tiny_sd(path))
    torch.manual_seed(1)
    # three stride-2 convolutions take the control image to the latents' grid (VAE factor 8)
    controlnet = ControlNetModel.from_unet(base.unet, conditioning_embedding_out_channels=(8, 8, 8, 16))
    components = {k: v for k, v in base.components.items() if k not in ("image_encoder", "feature_extractor")}
    if xl:
        pipe = StableDiffusionXLControlNetPipeline(**components, controlnet=controlnet, add_watermarker=False)
    else:
        components.pop("safety_checker", None)
        pipe = StableDiffusionControlNetPipeline(
            **components, controlnet=controlnet, safety_checker=None, feature_extractor=None,
            requires_safety_checker=False,
        )  # fmt: skip
    out = path / ("tiny-sdxl-controlnet" if xl else "tiny-sd-controlnet")
    pipe.save_pretrained(out)
    return out

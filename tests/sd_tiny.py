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


def make_tiny_sd(path: Path) -> Path:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTokenizer

    from synthaug.random_sd import clip_text_encoder, save_sd_folder

    torch.manual_seed(0)
    path = Path(path)
    tok_dir = path / "_tok_src"
    tok_dir.mkdir(parents=True, exist_ok=True)
    # Byte-level BPE as CLIP's: every byte char, with and without the end-of-word marker, plus a few
    # merges. "motorcycle" has no merge chain to one token, so it splits into several.
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
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(dict.fromkeys(merges)) + "\n")
    tokenizer = CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16)
    text_encoder = clip_text_encoder(tokenizer, 32, 2, 4, 37, 16)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
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
    return save_sd_folder(path / "tiny-sd", unet, vae, text_encoder, tokenizer)

"""Prompt encoding shared by training and generation: token ids, embeddings, encoder mask."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: How the UNet's cross-attention sees the prompt's tokens.
#: "all": every token, as Stable Diffusion was trained. "bos_and_words": the start token and
#: the words only; end and padding tokens are masked out (the toy model is trained so).
TEXT_MASK_POLICIES = ("all", "bos_and_words")


@dataclass
class EncodedText:
    """Token ids (B, L), text embeddings (B, L, D), and the encoder mask (B, L) or None for 'all'."""

    input_ids: torch.Tensor
    embeddings: torch.Tensor
    encoder_mask: torch.Tensor | None


def tokenize(tokenizer, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad/truncate to the tokenizer's max length; returns (input_ids, attention_mask)."""
    out = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    return out.input_ids, out.attention_mask


def encode_text(tokenizer, text_encoder, prompts: Sequence[str], mask_policy: str = "all") -> EncodedText:
    """Encode prompts with the model's own text encoder; build the cross-attention mask of `mask_policy`."""
    if mask_policy not in TEXT_MASK_POLICIES:
        raise ValueError(f"mask_policy={mask_policy!r} is unknown; use one of {TEXT_MASK_POLICIES}")
    ids, attn = tokenize(tokenizer, prompts)
    device = text_encoder.device
    ids, attn = ids.to(device), attn.to(device)
    if mask_policy == "all":
        # SD 1.x/2.x text encoders are run without a padding mask, as they were trained.
        return EncodedText(ids, text_encoder(ids)[0], None)
    emb = text_encoder(ids, attention_mask=attn)[0]
    keep = attn.bool() & (ids != tokenizer.eos_token_id)
    return EncodedText(ids, emb, keep.to(emb.dtype))

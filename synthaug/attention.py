"""Attention capture for diffusers UNets: swap in capturing processors, accumulate in place, restore.

    with capture_attention(unet, CaptureSpec(cross_factors=(1, 2))) as store:
        ...run the denoising loop, calling store.begin_step(i, n) and store.set_layout(...)...
    maps = store.cross_maps()          # {factor: (B, h, w, L)} averaged over layers, heads and steps

Each captured layer keeps its original (fused) processor for its output; the capturing
wrapper only recomputes the attention probabilities of the rows it needs (the conditional
half under classifier-free guidance) at the resolutions and steps the method uses, and adds
them into running sums. So capture memory does not grow with the number of steps, and
layers that are not captured run exactly as before. A *factor* is the downsampling of a
layer's map relative to the latent: for Stable Diffusion 1.5 at 512x512 (64x64 latents)
factors 1, 2, 4, 8 are the 64, 32, 16 and 8 pixel maps; for the 32x32 toy model they are
32, 16, 8.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture: cross- and self-attention factors, and the share of steps (start, end) in [0, 1]."""

    cross_factors: tuple[int, ...] = (1, 2)
    self_factors: tuple[int, ...] = ()
    step_range: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        for name in ("cross_factors", "self_factors"):
            bad = [f for f in getattr(self, name) if f < 1 or (f & (f - 1))]
            if bad:
                raise ValueError(f"CaptureSpec.{name} has {bad}: factors are powers of two >= 1 (1 = latent size).")
        lo, hi = self.step_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"CaptureSpec.step_range={self.step_range}: need 0 <= start < end <= 1.")


@dataclass
class AttentionStore:
    """Running sums of captured attention, per factor; filled by the capturing processors."""

    spec: CaptureSpec
    latent_hw: tuple[int, int] = (0, 0)
    cond_rows: slice = field(default_factory=lambda: slice(None))
    active: bool = False
    cross_sum: dict[int, torch.Tensor] = field(default_factory=dict)
    cross_count: dict[int, int] = field(default_factory=dict)
    self_sum: dict[int, torch.Tensor] = field(default_factory=dict)
    self_count: dict[int, int] = field(default_factory=dict)

    def set_layout(self, latent_hw: tuple[int, int], cond_rows: slice) -> None:
        """Tell the store the latent size and which batch rows are the conditional ones."""
        self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
        self.cond_rows = cond_rows

    def begin_step(self, index: int, total: int) -> None:
        """Mark the start of denoising step `index` of `total`; capture only inside spec.step_range."""
        pos = (index + 0.5) / max(total, 1)
        self.active = self.spec.step_range[0] <= pos < self.spec.step_range[1]

    def reset(self) -> None:
        self.cross_sum.clear()
        self.cross_count.clear()
        self.self_sum.clear()
        self.self_count.clear()

    def factor_of(self, tokens: int) -> tuple[int, int, int] | None:
        """(factor, h, w) of a layer whose queries number `tokens`; None if no power-of-two fits."""
        H, W = self.latent_hw
        f = 1
        while H * W and f <= max(H, W):
            h, w = self.grid(f)
            if h * w == tokens:
                return f, h, w
            f *= 2
        return None

    def grid(self, factor: int) -> tuple[int, int]:
        """(h, w) of the maps at `factor`: the latent size divided by it, rounded up as the UNet does."""
        H, W = self.latent_hw
        return math.ceil(H / factor), math.ceil(W / factor)

    def add(self, kind: str, factor: int, probs: torch.Tensor) -> None:
        sums, counts = (self.cross_sum, self.cross_count) if kind == "cross" else (self.self_sum, self.self_count)
        probs = probs.detach().float()
        if factor in sums:
            sums[factor].add_(probs)
        else:
            sums[factor] = probs.clone()
        counts[factor] = counts.get(factor, 0) + 1

    def cross_maps(self) -> dict[int, torch.Tensor]:
        """{factor: (B, h, w, L)} cross-attention averaged over captured layers, heads and steps."""
        return {
            f: (s / self.cross_count[f]).reshape(s.shape[0], *self.grid(f), s.shape[-1])
            for f, s in self.cross_sum.items()
        }

    def self_maps(self) -> dict[int, torch.Tensor]:
        """{factor: (B, h*w, h*w)} self-attention (rows: queries) averaged over layers, heads and steps."""
        return {f: s / self.self_count[f] for f, s in self.self_sum.items()}

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.cross_sum, self.self_sum) for t in d.values())


class CapturingProcessor:
    """Wraps an attention processor: the output comes from the original, probabilities go to the store."""

    def __init__(self, inner, store: AttentionStore) -> None:
        self.inner = inner
        self.store = store

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        store = self.store
        if store.active and hidden_states.ndim == 3 and attn.spatial_norm is None:
            kind = "self" if encoder_hidden_states is None else "cross"
            wanted = store.spec.self_factors if kind == "self" else store.spec.cross_factors
            geometry = store.factor_of(hidden_states.shape[1])
            if geometry is not None and geometry[0] in wanted:
                with torch.no_grad():
                    store.add(
                        kind,
                        geometry[0],
                        attention_probs(attn, hidden_states, encoder_hidden_states, attention_mask, store.cond_rows),
                    )
        return out


def attention_probs(attn, hidden_states, encoder_hidden_states, attention_mask, rows: slice) -> torch.Tensor:
    """Softmax attention of `rows` of the batch, averaged over heads: (b, N_query, N_key)."""
    x = hidden_states[rows]
    b = x.shape[0]
    if attn.group_norm is not None:
        x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
    ctx = x if encoder_hidden_states is None else encoder_hidden_states[rows]
    if encoder_hidden_states is not None and attn.norm_cross:
        ctx = attn.norm_encoder_hidden_states(ctx)
    q, k = attn.to_q(x), attn.to_k(ctx)
    head_dim = k.shape[-1] // attn.heads
    q = q.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    k = k.view(b, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    mask = None
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask[rows], k.shape[2], b).view(b, attn.heads, -1, k.shape[2])
    # One head at a time keeps the peak at a single (N, N) map for large self-attention.
    total = None
    for h in range(attn.heads):
        scores = torch.matmul(q[:, h].float(), k[:, h].float().transpose(-1, -2)) * attn.scale
        if mask is not None:
            scores = scores + mask[:, h].float()
        p = scores.softmax(dim=-1)
        total = p if total is None else total.add_(p)
    return total / attn.heads


@contextmanager
def capture_attention(unet, spec: CaptureSpec) -> Iterator[AttentionStore]:
    """Swap capturing processors into `unet` for the duration; restore the originals on exit, also on error."""
    store = AttentionStore(spec)
    originals = dict(unet.attn_processors)
    kinds = set()
    if spec.cross_factors:
        kinds.add("attn2")
    if spec.self_factors:
        kinds.add("attn1")
    wrapped = {
        name: CapturingProcessor(proc, store) if name.split(".")[-2] in kinds else proc
        for name, proc in originals.items()
    }
    unet.set_attn_processor(wrapped)
    try:
        yield store
    finally:
        unet.set_attn_processor(originals)

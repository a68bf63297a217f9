"""Attention capture for diffusers UNets: swap in capturing processors, accumulate in place, restore.

    with capture_attention(unet, CaptureSpec(cross_factors=(1, 2))) as captured:   # SD's 64 and 32 px maps
        ...run the denoising loop, calling captured.begin_step(i, n) and captured.set_layout(...)...
    maps = captured.cross_maps()          # {factor: (B, h, w, L)} averaged over layers, heads and steps

With ``CaptureSpec(features=(1, 2, 4), timestep=50)`` the same context also keeps, from one
extra UNet pass over the image noised to timestep 50 exactly (``captured.begin_timestep_pass()``;
see synthaug.features.timestep_pass), the UNet decoder's features (each up block's output
before its upsampler) and that pass's cross-attention (``cross_maps(at_step=True)``): what the
learned decoder annotator reads, at the timestep it was trained at, on generated and real
images alike (a sampler's own steps rarely fall on it: 25 Euler steps pass t=39, not 50).

Each captured layer keeps its original (fused) processor for its output; the capturing
wrapper only recomputes the attention probabilities of the rows it needs (the conditional
half under classifier-free guidance) at the resolutions and steps the method uses, and adds
them into running sums. So capture memory does not grow with the number of steps, and
layers that are not captured run exactly as before. A *factor* is the downsampling of a
layer's map relative to the latent: for Stable Diffusion 1.5 at 512x512 (64x64 latents)
factors 1, 2, 4, 8 are the 64, 32, 16 and 8 pixel maps. The 32x32 toy model has attention at
factors 2 and 4 (16 and 8 pixels). `attention_factors(unet)` lists them, and `check_capture`
fails at start-up when an annotator asks for factors the UNet lacks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class CaptureSpec:
    """What to capture: cross- and self-attention factors, UNet decoder feature factors, and when.

    `step_range` is the share of steps (start, end) in [0, 1] over which attention is averaged.
    `timestep`, when set, is the timestep of the extra pass whose features and cross-attention
    are kept apart: the learned decoder is trained, and read, at one timestep.
    """

    cross_factors: tuple[int, ...] = (1, 2)
    self_factors: tuple[int, ...] = ()
    step_range: tuple[float, float] = (0.0, 1.0)
    features: tuple[int, ...] = ()
    timestep: int | None = None

    def __post_init__(self) -> None:
        if self.timestep is not None and self.timestep < 0:
            raise ValueError(f"CaptureSpec.timestep={self.timestep} must be >= 0 (a training timestep of the model)")
        for name in ("cross_factors", "self_factors", "features"):
            bad = [f for f in getattr(self, name) if f < 1 or (f & (f - 1))]
            if bad:
                raise ValueError(f"CaptureSpec.{name} has {bad}: factors are powers of two >= 1 (1 = latent size).")
        lo, hi = self.step_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"CaptureSpec.step_range={self.step_range}: need 0 <= start < end <= 1.")


@dataclass
class CapturedAttention:
    """Running sums of captured attention, per factor; filled by the capturing processors."""

    spec: CaptureSpec
    latent_hw: tuple[int, int] = (0, 0)
    cond_rows: slice = field(default_factory=lambda: slice(None))
    active: bool = False
    at_step: bool = False
    cross_sum: dict[int, torch.Tensor] = field(default_factory=dict)
    cross_count: dict[int, int] = field(default_factory=dict)
    self_sum: dict[int, torch.Tensor] = field(default_factory=dict)
    self_count: dict[int, int] = field(default_factory=dict)
    feature_sum: dict[int, torch.Tensor] = field(default_factory=dict)
    feature_count: dict[int, int] = field(default_factory=dict)
    step_cross_sum: dict[int, torch.Tensor] = field(default_factory=dict)
    step_cross_count: dict[int, int] = field(default_factory=dict)

    def set_layout(self, latent_hw: tuple[int, int], cond_rows: slice) -> None:
        """Tell the capture the latent size and which batch rows are the conditional ones."""
        self.latent_hw = (int(latent_hw[0]), int(latent_hw[1]))
        self.cond_rows = cond_rows

    def begin_step(self, index: int, total: int) -> None:
        """Mark the start of denoising step `index` of `total`: is it inside spec.step_range."""
        pos = (index + 0.5) / max(total, 1)
        self.active = self.spec.step_range[0] <= pos < self.spec.step_range[1]
        self.at_step = False

    def begin_timestep_pass(self, average: bool = False) -> None:
        """Mark the start of the pass at spec.timestep: its features and cross-attention are kept apart
        (`at_step`); with `average` its attention also goes into the running sums (a real image's only pass)."""
        if self.spec.timestep is None:
            raise RuntimeError("a timestep pass needs CaptureSpec.timestep")
        self.active, self.at_step = average, True

    def reset(self) -> None:
        sums = (self.cross_sum, self.self_sum, self.feature_sum, self.step_cross_sum)
        counts = (self.cross_count, self.self_count, self.feature_count, self.step_cross_count)
        for d in (*sums, *counts):
            d.clear()

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
        """Add a captured tensor of `kind` ('cross', 'self', 'feature', 'step_cross') at `factor` to its running sum."""
        sums, counts = {
            "cross": (self.cross_sum, self.cross_count),
            "self": (self.self_sum, self.self_count),
            "feature": (self.feature_sum, self.feature_count),
            "step_cross": (self.step_cross_sum, self.step_cross_count),
        }[kind]
        probs = probs.detach().float()
        if factor in sums:
            sums[factor].add_(probs)
        else:
            sums[factor] = probs.clone()
        counts[factor] = counts.get(factor, 0) + 1

    def cross_maps(self, at_step: bool = False) -> dict[int, torch.Tensor]:
        """{factor: (B, h, w, L)} cross-attention averaged over captured layers, heads and steps
        (`at_step`: at spec.timestep's step only)."""
        sums, counts = (self.step_cross_sum, self.step_cross_count) if at_step else (self.cross_sum, self.cross_count)
        return {f: (s / counts[f]).reshape(s.shape[0], *self.grid(f), s.shape[-1]) for f, s in sums.items()}

    def self_maps(self) -> dict[int, torch.Tensor]:
        """{factor: (B, h*w, h*w)} self-attention (rows: queries) averaged over layers, heads and steps."""
        return {f: s / self.self_count[f] for f, s in self.self_sum.items()}

    def feature_maps(self) -> dict[int, torch.Tensor]:
        """{factor: (B, C, h, w)} UNet decoder features averaged over the captured steps."""
        return {f: s / self.feature_count[f] for f, s in self.feature_sum.items()}

    def nbytes(self) -> int:
        sums = (self.cross_sum, self.self_sum, self.feature_sum, self.step_cross_sum)
        return sum(t.numel() * t.element_size() for d in sums for t in d.values())


class CapturingProcessor:
    """Wraps an attention processor: the output comes from the original, probabilities go to the captured."""

    def __init__(self, inner, captured: CapturedAttention) -> None:
        self.inner = inner
        self.captured = captured

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        factor, kinds = self.wanted(attn, hidden_states, encoder_hidden_states)
        if not kinds:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        outputs: dict[str, torch.Tensor] = {}
        keys_from = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        with keep_projections(outputs, {"q": (attn.to_q, hidden_states), "k": (attn.to_k, keys_from)}):
            out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        rows = self.captured.cond_rows
        with torch.no_grad():
            probs = attention_probs(
                attn, hidden_states, encoder_hidden_states, attention_mask, rows, kept_rows(outputs, rows)
            )
            for k in kinds:
                self.captured.add(k, factor, probs)
        return out

    def wanted(self, attn, hidden_states: torch.Tensor, encoder_hidden_states) -> tuple[int, list[str]]:
        """The grid factor of this call's queries and the maps wanted of it now ([] for none)."""
        captured = self.captured
        if not (captured.active or captured.at_step) or hidden_states.ndim != 3 or attn.spatial_norm is not None:
            return 0, []
        kind = "self" if encoder_hidden_states is None else "cross"
        factors = captured.spec.self_factors if kind == "self" else captured.spec.cross_factors
        geometry = captured.factor_of(hidden_states.shape[1])
        if geometry is None or geometry[0] not in factors:
            return 0, []
        on = ((kind, captured.active), ("step_cross", captured.at_step and kind == "cross"))
        return geometry[0], [k for k, yes in on if yes]


def attention_probs(
    attn, hidden_states, encoder_hidden_states, attention_mask, rows: slice, kept: dict | None = None
) -> torch.Tensor:
    """Softmax attention of `rows` of the batch, averaged over heads: (b, N_query, N_key). `kept`: the layer's own
    q and k projections of those rows (keep_projections), used instead of computing them again."""
    kept = kept or {}
    x = hidden_states[rows]
    b = x.shape[0]
    if attn.group_norm is not None and not {"q", "k"} <= kept.keys():
        x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
    q = kept["q"] if "q" in kept else attn.to_q(x)
    if "k" in kept:
        k = kept["k"]
    else:
        ctx = x if encoder_hidden_states is None else encoder_hidden_states[rows]
        if encoder_hidden_states is not None and attn.norm_cross:
            ctx = attn.norm_encoder_hidden_states(ctx)
        k = attn.to_k(ctx)
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
    return head_mean_softmax(q, k, attn.scale, mask)


def head_mean_softmax(q: torch.Tensor, k: torch.Tensor, scale: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + mask) averaged over heads, for q (b, heads, N, d) and k (b, heads, L, d).

    One head at a time keeps the peak at a single (N, L) map for large self-attention."""
    total = None
    for h in range(q.shape[1]):
        scores = torch.matmul(q[:, h].float(), k[:, h].float().transpose(-1, -2)) * scale
        if mask is not None:
            scores = scores + mask[:, h].float()
        p = scores.softmax(dim=-1)
        total = p if total is None else total.add_(p)
    return total / q.shape[1]


@contextmanager
def keep_projections(outputs: dict[str, torch.Tensor], projections: dict[str, tuple[Any, Any]]) -> Iterator[None]:
    """Keep a layer's projections in `outputs` as the layer computes them, so capture need not compute them
    again: `projections` maps a key to (the projection module, the very tensor the layer was given that it
    projects). Only the module's first call, on that tensor, is kept: anything else (a processor that fuses the
    projections, normalises its input first, or projects another input) leaves the key empty, and capture
    recomputes it."""

    def keeper(key: str, source: torch.Tensor | None):
        def hook(_module, inputs, output) -> None:
            if key not in outputs and inputs and inputs[0] is source:
                outputs[key] = output
            else:  # a second call, or another input: not the projection capture needs
                outputs[key] = None

        return hook

    hooks = [
        module.register_forward_hook(keeper(key, source))
        for key, (module, source) in projections.items()
        if module is not None and source is not None
    ]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
    for key in [k for k, v in outputs.items() if v is None]:
        del outputs[key]


def joint_projections(attn, image: torch.Tensor, text: torch.Tensor | None) -> dict[str, tuple[Any, Any]]:
    """A joint-attention layer's projections capture keeps: image q and k, and the text's own k ('kt')."""
    return {"q": (attn.to_q, image), "k": (attn.to_k, image), "kt": (getattr(attn, "add_k_proj", None), text)}


def kept_rows(outputs: dict[str, torch.Tensor] | None, rows: Any) -> dict[str, torch.Tensor]:
    """The kept projections (keep_projections) of the batch rows `rows`."""
    return {key: t[rows] for key, t in (outputs or {}).items()}


class JointCapturingProcessor(CapturingProcessor):
    """SD3's joint (MMDiT) attention: image and text tokens attend together; the image tokens come first.

    Its maps are the image queries' softmax over the text keys alone ('cross') and over the image keys
    alone ('self'): the image-query x text-key block of the joint attention, renormalised over the text
    keys, is exactly that softmax, a distribution over tokens as a UNet's cross-attention is."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, *args, **kwargs):
        if encoder_hidden_states is None or not self.joint_wanted(hidden_states)[1]:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        outputs: dict[str, torch.Tensor] = {}
        with keep_projections(outputs, joint_projections(attn, hidden_states, encoder_hidden_states)):
            out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        self.capture_joint(attn, hidden_states, encoder_hidden_states, None, outputs)
        return out

    def projections(
        self, attn, image: torch.Tensor, text: torch.Tensor, rotary, outputs: dict | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(q_image, k_image, k_text), each (b, heads, tokens, head_dim), as the layer computes them; from the
        layer's own linear `outputs` (all batch rows; keep_projections) where given, else computed for the rows given."""
        b, heads = image.shape[0], attn.heads
        split = lambda t: t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731
        kept = kept_rows(outputs, self.captured.cond_rows)
        q = split(kept["q"] if "q" in kept else attn.to_q(image))
        k = split(kept["k"] if "k" in kept else attn.to_k(image))
        kt = split(kept["kt"] if "kt" in kept else attn.add_k_proj(text))
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        if attn.norm_added_k is not None:
            kt = attn.norm_added_k(kt)
        return q, k, kt

    def joint_wanted(self, image: torch.Tensor) -> tuple[int, list[str]]:
        """The grid factor of `image` tokens and the maps wanted of this layer now ([] for none)."""
        captured = self.captured
        if not (captured.active or captured.at_step):
            return 0, []
        geometry = captured.factor_of(image.shape[1])
        if geometry is None:
            return 0, []
        factor = geometry[0]
        wanted = [
            kind
            for kind, on in (
                ("cross", captured.active and factor in captured.spec.cross_factors),
                ("self", captured.active and factor in captured.spec.self_factors),
                ("step_cross", captured.at_step and factor in captured.spec.cross_factors),
            )
            if on
        ]
        return factor, wanted

    def capture_joint(self, attn, image: torch.Tensor, text: torch.Tensor, rotary, outputs: dict | None = None) -> None:
        """Add the image queries' maps over the text keys (cross) and over the image keys (self)."""
        factor, wanted = self.joint_wanted(image)
        if not wanted:
            return
        captured = self.captured
        rows = captured.cond_rows
        with torch.no_grad():
            q, k, kt = self.projections(attn, image[rows], text[rows], rotary, outputs)
            scale = q.shape[-1] ** -0.5
            for kind in wanted:
                captured.add(kind, factor, head_mean_softmax(q, kt if kind != "self" else k, scale))


class FluxCapturingProcessor(JointCapturingProcessor):
    """FLUX's attention: the text tokens come first. Its double-stream blocks project text with their own
    weights (as SD3); its single-stream blocks see text and image as one sequence, with rotary position
    embeddings over both. The maps are as `JointCapturingProcessor`'s."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        image = text = None
        if encoder_hidden_states is not None:
            image, text = hidden_states, encoder_hidden_states
        elif self.captured.latent_hw != (0, 0):
            n_image = math.prod(self.captured.grid(FLUX_TOKEN_FACTOR))
            n_text = hidden_states.shape[1] - n_image
            if n_text > 0:
                image, text = hidden_states[:, n_text:], hidden_states[:, :n_text]
        if image is None or not self.joint_wanted(image)[1]:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        outputs: dict[str, torch.Tensor] = {}
        with keep_projections(outputs, joint_projections(attn, hidden_states, encoder_hidden_states)):
            out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, image_rotary_emb)
        self.capture_joint(attn, image, text, image_rotary_emb, outputs)
        return out

    def projections(
        self, attn, image: torch.Tensor, text: torch.Tensor, rotary, outputs: dict | None = None
    ) -> tuple[torch.Tensor, ...]:
        """As `JointCapturingProcessor.projections`, with FLUX's per-head norms and rotary embeddings; a
        single-stream layer's kept q and k cover [text, image] and are split here."""
        from diffusers.models.embeddings import apply_rotary_emb

        n_text = text.shape[1]
        kept = kept_rows(outputs, self.captured.cond_rows)
        if attn.added_kv_proj_dim is None:  # single-stream: q and k were projected from [text, image] as one
            if "k" in kept:
                kept["kt"] = kept["k"][:, :n_text]
            kept = {key: t if key == "kt" else t[:, n_text:] for key, t in kept.items()}
        shape = lambda t: t.unflatten(-1, (-1, attn.head_dim))  # noqa: E731  (b, tokens, heads, head_dim)
        q = attn.norm_q(shape(kept["q"] if "q" in kept else attn.to_q(image)))
        k = attn.norm_k(shape(kept["k"] if "k" in kept else attn.to_k(image)))
        if attn.added_kv_proj_dim is not None:  # double-stream: the text's own projections
            kt = attn.norm_added_k(shape(kept["kt"] if "kt" in kept else attn.add_k_proj(text)))
        else:  # single-stream: one projection for the whole sequence
            kt = attn.norm_k(shape(kept["kt"] if "kt" in kept else attn.to_k(text)))
        if rotary is not None:  # rotary embeddings cover [text, image] in that order
            cos, sin = rotary
            text_rot, image_rot = (cos[:n_text], sin[:n_text]), (cos[n_text:], sin[n_text:])
            q = apply_rotary_emb(q, image_rot, sequence_dim=1)
            k = apply_rotary_emb(k, image_rot, sequence_dim=1)
            kt = apply_rotary_emb(kt, text_rot, sequence_dim=1)
        return q.transpose(1, 2), k.transpose(1, 2), kt.transpose(1, 2)


#: FLUX packs 2x2 latent cells into one token: its maps are at factor 2 of the latent.
FLUX_TOKEN_FACTOR = 2


def denoiser_style(denoiser) -> str:
    """'unet', 'dit' (PixArt: separate self- and cross-attention), 'sd3' (joint) or 'flux' (joint and single)."""
    if hasattr(denoiser, "down_blocks"):
        return "unet"
    name = type(denoiser).__name__
    if name.startswith("Flux"):
        return "flux"
    if name.startswith("SD3"):
        return "sd3"
    return "dit"


def token_factor(denoiser) -> int:
    """The factor (latent cells per token side) of a transformer denoiser's image tokens."""
    return token_factor_of(type(denoiser).__name__, getattr(denoiser.config, "patch_size", None))


def token_factor_of(class_name: str, patch_size: int | None) -> int:
    """`token_factor` from a transformer's class name and patch size alone (its config.json, before loading):
    FLUX packs 2x2 latent cells into a token whatever its patch size says; the others patch by patch_size."""
    return FLUX_TOKEN_FACTOR if class_name.startswith("Flux") else int(patch_size or 1)


def attention_factors(unet) -> dict[str, tuple[int, ...]]:
    """{'cross': factors, 'self': factors} at which the denoiser `unet` has attention layers. A UNet's are read
    off its block layout (down block i works at factor 2**i, the middle block at the coarsest, up blocks in
    reverse); a transformer's are all at its token grid (joint layers give both kinds)."""
    found: dict[str, set[int]] = {"cross": set(), "self": set()}
    style = denoiser_style(unet)
    if style != "unet":  # a transformer: every layer attends at its token grid
        f = token_factor(unet)
        for name in unet.attn_processors:
            kind = name.split(".")[-2]
            if kind == "attn" or (style == "dit" and kind == "attn2"):
                found["cross"].add(f)
            if kind in ("attn", "attn1") or (style == "sd3" and kind == "attn2"):
                found["self"].add(f)
        return {kind: tuple(sorted(fs)) for kind, fs in found.items()}
    n_down, n_up = len(unet.down_blocks), len(unet.up_blocks)
    for name in unet.attn_processors:
        parts = name.split(".")
        kind = {"attn1": "self", "attn2": "cross"}.get(parts[-2])
        if kind is None:
            continue
        if parts[0] == "down_blocks":
            found[kind].add(2 ** int(parts[1]))
        elif parts[0] == "up_blocks":
            found[kind].add(2 ** (n_up - 1 - int(parts[1])))
        elif parts[0] == "mid_block":
            found[kind].add(2 ** (n_down - 1))
    return {kind: tuple(sorted(fs)) for kind, fs in found.items()}


def check_capture(spec: CaptureSpec, unet) -> None:
    """Raise ValueError, before any generation, if `spec` asks for attention at factors `unet` has none at."""
    have = attention_factors(unet)
    for kind, wanted in (("cross", spec.cross_factors), ("self", spec.self_factors)):
        missing = sorted(set(wanted) - set(have[kind]))
        if missing:
            raise ValueError(
                f"the annotator asks for {kind}-attention at factors {missing}, but this UNet has {kind}-attention "
                f"only at factors {list(have[kind])}: set the annotator's {kind} factors (annotator.factors, "
                f"annotator.cross_factors or annotator.self_factor) to some of those"
            )


def default_cross_factors(unet, preferred: tuple[int, ...] = (1, 2)) -> tuple[int, ...]:
    """The `preferred` cross-attention factors that `unet` has (its finest maps); its finest one if none."""
    have = attention_factors(unet)["cross"]
    if not have:
        raise ValueError("this UNet has no cross-attention layers: attention annotators cannot read it")
    return tuple(f for f in preferred if f in have) or have[:1]


@contextmanager
def capture_attention(unet, spec: CaptureSpec) -> Iterator[CapturedAttention]:
    """Swap capturing processors into `unet` for the duration; restore the originals on exit, also on error."""
    captured = CapturedAttention(spec)
    originals = dict(unet.attn_processors)
    style = denoiser_style(unet)
    if spec.features and style != "unet":
        raise ValueError(
            f"CaptureSpec.features asks for UNet decoder features, but the denoiser is a {type(unet).__name__}: "
            "the learned decoder annotator needs a UNet model (Stable Diffusion 1.x/2.x or the toy model)"
        )
    kinds = set()
    if spec.cross_factors:
        kinds.add("attn2")
    if spec.self_factors:
        kinds.add("attn1" if style != "sd3" else "attn2")
    joint = {"sd3": JointCapturingProcessor, "flux": FluxCapturingProcessor}.get(style)

    def wrap(name: str, proc):
        kind = name.split(".")[-2]
        if kind == "attn" and joint is not None and (spec.cross_factors or spec.self_factors):
            return joint(proc, captured)
        return CapturingProcessor(proc, captured) if kind in kinds else proc

    unet.set_attn_processor({name: wrap(name, proc) for name, proc in originals.items()})
    handles = feature_hooks(unet, captured) if spec.features else []
    try:
        yield captured
    finally:
        for h in handles:
            h.remove()
        unet.set_attn_processor(originals)


def feature_hooks(unet, captured: CapturedAttention) -> list:
    """Hooks that add each up block's features (before its upsampler) to `captured` at the wanted factors."""

    def keep(x: torch.Tensor) -> None:
        if not (captured.at_step if captured.spec.timestep is not None else captured.active) or x.ndim != 4:
            return
        f = captured.latent_hw[0] // x.shape[-2] if x.shape[-2] else 0
        if f in captured.spec.features and captured.grid(f) == tuple(x.shape[-2:]):
            captured.add("feature", f, x[captured.cond_rows])

    handles = []
    for block in unet.up_blocks:
        upsamplers = getattr(block, "upsamplers", None)
        if upsamplers:
            handles.append(upsamplers[0].register_forward_pre_hook(lambda mod, args: keep(args[0])))
        else:
            handles.append(block.register_forward_hook(lambda mod, args, out: keep(out)))
    return handles

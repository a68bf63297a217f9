"""UNet features of real images: encode, noise to one timestep, one UNet pass, capture.

The learned decoder annotator (DatasetDM) is trained on labelled *real* images but applied
to *generated* ones. Both give it the same input, made the same way (`timestep_pass`): the
clean image (a real one encoded through the VAE if the model has one; a generated one as the
sampler left it) is noised to the timestep the decoder reads (``x_t = sqrt(a_t) x_0 +
sqrt(1 - a_t) e``, the forward process the UNet was trained on), and the UNet runs once on it
with the prompt's conditional text, under ``capture_attention``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from synthaug.attention import CapturedAttention, CaptureSpec, capture_attention
from synthaug.prompts import PromptSpec, class_targets
from synthaug.text import EncodedText, encode_text
from synthaug.vocabulary import ClassVocabulary

#: How a real image's prompt names its classes; "{cls}" becomes "circle and a square".
DEFAULT_REAL_TEMPLATE = "a {cls}"
REAL_JOINER = " and a "


def real_prompt(
    vocab: ClassVocabulary, class_ids: Sequence[int], template: str = DEFAULT_REAL_TEMPLATE, seed: int = 0
) -> PromptSpec:
    """A prompt naming the foreground classes of a labelled image, with one target per class."""
    if "{cls}" not in template:
        raise ValueError(f"template {template!r} lacks the '{{cls}}' placeholder where the class names go")
    names = [vocab.names[c] for c in dict.fromkeys(class_ids) if c in vocab.foreground_ids]
    if not names:
        return PromptSpec("", (), seed)
    text = template.format(cls=REAL_JOINER.join(vocab.prompt_word(n) for n in names))
    return PromptSpec(text, class_targets(vocab, text, names), seed)


def encode_images(model, images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> the model's clean latents x_0: VAE latents, or pixels in [-1, 1] in pixel space."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).to(model.device, torch.float32)
    x = (x / 127.5 - 1.0).to(model.dtype)
    if model.vae is None:
        return x
    return model.vae.encode(x).latent_dist.mean * model.vae.config.scaling_factor


def noised(model, x0: torch.Tensor, timestep: int, seeds: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 noised to `timestep` by the model's own forward process (its training betas, whatever sampler it
    uses), with one seeded noise per image; returns (x_t, the timestep tensor)."""
    from diffusers import DDPMScheduler

    noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds])
    forward = DDPMScheduler.from_config(model.scheduler.config)
    t = torch.full((len(x0),), int(timestep), dtype=torch.long, device=x0.device)
    return forward.add_noise(x0, noise.to(x0.device, x0.dtype), t), t


@torch.no_grad()
def timestep_pass(
    model, captured: CapturedAttention, x0: torch.Tensor, text: EncodedText, seeds: Sequence[int], average: bool = False
) -> None:
    """One UNet pass over the clean latents `x0` noised to `captured.spec.timestep`, captured apart
    (`cross_maps(at_step=True)`, `feature_maps()`): what the learned decoder reads, on generated and
    real images alike. `text` holds the conditional rows only."""
    xt, t = noised(model, x0, int(captured.spec.timestep), seeds)
    captured.set_layout(tuple(x0.shape[-2:]), slice(None))
    captured.begin_timestep_pass(average)
    model.unet(xt, t, text.embeddings, encoder_attention_mask=text.encoder_mask)


@torch.no_grad()
def capture_real(
    model, images: np.ndarray, prompts: Sequence[str], spec: CaptureSpec, seeds: Sequence[int]
) -> CapturedAttention:
    """Capture `spec` (features, cross-attention) for real images noised to `spec.timestep`; one seed per image."""
    if spec.timestep is None:
        raise ValueError("capture_real needs CaptureSpec.timestep: the timestep to noise the images to")
    if not len(images) == len(prompts) == len(seeds):
        raise ValueError(f"{len(images)} images, {len(prompts)} prompts and {len(seeds)} seeds: give one of each")
    x0 = encode_images(model, images)
    text = encode_text(model.tokenizer, model.text_encoder, list(prompts), model.text_mask_policy)
    with capture_attention(model.unet, spec) as captured:
        timestep_pass(model, captured, x0, text, seeds, average=True)
    return captured

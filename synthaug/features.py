"""UNet features of real images: encode, noise to one timestep, one UNet pass, capture.

The learned decoder annotator (DatasetDM) is trained on labelled *real* images but applied
to *generated* ones. Both must give it the same kind of input, so a real image goes through
what a generated one went through at the captured step: it is encoded (through the VAE if
the model has one), noised to the timestep the decoder reads (``x_t = sqrt(a_t) x_0 +
sqrt(1 - a_t) e``, the forward process the UNet was trained on), and the UNet runs once on it
with a prompt that names its classes, under the same ``capture_attention`` as generation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from synthaug.attention import AttentionStore, CaptureSpec, capture_attention
from synthaug.prompts import PromptSpec, class_targets
from synthaug.text import encode_text
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


@torch.no_grad()
def capture_real(
    model, images: np.ndarray, prompts: Sequence[str], spec: CaptureSpec, seeds: Sequence[int]
) -> AttentionStore:
    """Capture `spec` (features, cross-attention) for real images noised to `spec.timestep`; one seed per image."""
    from diffusers import DDPMScheduler

    if spec.timestep is None:
        raise ValueError("capture_real needs CaptureSpec.timestep: the timestep to noise the images to")
    if not len(images) == len(prompts) == len(seeds):
        raise ValueError(f"{len(images)} images, {len(prompts)} prompts and {len(seeds)} seeds: give one of each")
    x0 = encode_images(model, images)
    noise = torch.stack([torch.randn(x0.shape[1:], generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(
        x0.device, x0.dtype
    )
    # The forward process of the model's own training schedule (its betas), whatever sampler it uses.
    forward = DDPMScheduler.from_config(model.scheduler.config)
    t = torch.full((len(images),), int(spec.timestep), dtype=torch.long, device=x0.device)
    xt = forward.add_noise(x0, noise, t)
    text = encode_text(model.tokenizer, model.text_encoder, list(prompts), model.text_mask_policy)
    with capture_attention(model.unet, spec) as store:
        store.set_layout(tuple(x0.shape[-2:]), slice(None))
        store.set_schedule([int(spec.timestep)])
        store.begin_step(0, 1)
        model.unet(xt, t, text.embeddings, encoder_attention_mask=text.encoder_mask)
    return store

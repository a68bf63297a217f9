"""Attention capture on a real diffusers UNet (the toy architecture, random weights: mechanics only)."""

from __future__ import annotations

import pytest
import torch

from synthaug.annotators import build_annotator, prepare_annotator
from synthaug.attention import (
    CaptureSpec,
    CapturingProcessor,
    attention_factors,
    capture_attention,
    check_capture,
    default_cross_factors,
)
from synthaug.generator import DiffusionModel, generate_batch, load_model

PROMPTS = ["a red circle and a blue square on stripes", "a green triangle on noise"]


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> DiffusionModel:
    from synthaug.toy.model import build_text_encoder, build_tokenizer, build_unet, save_model

    torch.manual_seed(0)
    tok = build_tokenizer()
    path = tmp_path_factory.mktemp("toy_random")
    save_model(
        path, build_unet(), build_text_encoder(tok), tok, {"text_mask_policy": "bos_and_words", "resolution": 32}
    )
    return load_model(path)


def test_processors_restored_after_exception(random_model):
    unet = random_model.unet
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"), capture_attention(unet, CaptureSpec((2, 4), (2,))):
        assert any(isinstance(p, CapturingProcessor) for p in unet.attn_processors.values())
        raise RuntimeError("boom")
    after = unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)


def test_capture_does_not_change_the_images(random_model):
    plain = generate_batch(random_model, PROMPTS, [1, 2], steps=3, guidance=3.0)
    captured = generate_batch(
        random_model,
        PROMPTS,
        [1, 2],
        steps=3,
        guidance=3.0,
        capture=CaptureSpec(cross_factors=(2, 4), self_factors=(2, 4)),
    )
    assert (plain.images == captured.images).all()
    assert plain.captured is None and captured.captured is not None


def test_memory_does_not_grow_with_steps(random_model):
    spec = CaptureSpec(cross_factors=(2, 4), self_factors=(2,))
    short = generate_batch(random_model, PROMPTS, [1, 2], steps=2, capture=spec).captured
    long = generate_batch(random_model, PROMPTS, [1, 2], steps=7, capture=spec).captured
    assert short.nbytes() == long.nbytes() > 0
    # Running sums: counts grow with steps, the tensors do not.
    assert long.cross_count[2] > short.cross_count[2]


def test_captures_conditional_half_as_probabilities(random_model):
    out = generate_batch(
        random_model, PROMPTS, [1, 2], steps=2, guidance=3.0, capture=CaptureSpec(cross_factors=(2, 4))
    )
    maps = out.captured.cross_maps()
    assert set(maps) == {2, 4}
    assert maps[2].shape == (2, 16, 16, random_model.tokenizer.model_max_length)
    assert maps[4].shape[1:3] == (8, 8)
    # Rows are softmax distributions; masked end/padding tokens get no attention.
    assert torch.allclose(maps[2].sum(-1), torch.ones(2, 16, 16), atol=1e-4)
    ids = out.input_ids
    masked = (ids == random_model.tokenizer.eos_token_id) | (ids == random_model.tokenizer.pad_token_id)
    assert maps[2].permute(0, 3, 1, 2)[masked].abs().max() < 1e-6


def test_captured_map_is_the_layers_own_attention_on_the_conditional_rows(random_model):
    """One step under guidance: the captured 16 px map equals, averaged over the layers at that factor, the
    softmax(q k^T) each layer computes from its own inputs (checked against its own output) on the rows of the
    prompts, and not on the negative prompt's rows, which differ."""
    unet = random_model.unet
    layers = [m for name, m in unet.named_modules() if name.endswith("attn2")]
    seen: list[tuple] = []

    def record(module, args, kwargs, out):
        if args[0].shape[1] == 16 * 16:  # factor 2 of the 32 px toy latents
            seen.append((module, args[0], kwargs["encoder_hidden_states"], kwargs.get("attention_mask"), out))

    handles = [m.register_forward_hook(record, with_kwargs=True) for m in layers]
    try:
        out = generate_batch(random_model, PROMPTS, [1, 2], steps=1, guidance=3.0, capture=CaptureSpec((2,)))
    finally:
        for h in handles:
            h.remove()
    assert seen and all(x.shape[0] == 4 for _, x, *_ in seen)  # 2 negative-prompt rows, then 2 prompt rows

    def probs(attn, x, ctx, bias) -> tuple[torch.Tensor, torch.Tensor]:
        """Per head softmax(q k^T * scale + mask) and the layer output it gives (x without group norm)."""
        b, heads = x.shape[0], attn.heads
        q, k, v = attn.to_q(x), attn.to_k(ctx), attn.to_v(ctx)
        split = lambda t: t.view(b, -1, heads, t.shape[-1] // heads).transpose(1, 2)  # noqa: E731
        scores = split(q) @ split(k).transpose(-1, -2) * attn.scale
        if bias is not None:
            scores = scores + bias[:, None]
        p = scores.softmax(-1)
        y = (p @ split(v)).transpose(1, 2).reshape(b, -1, heads * split(v).shape[-1])
        return p, attn.to_out[1](attn.to_out[0](y))

    cond, uncond = [], []
    with torch.no_grad():
        for attn, x, ctx, bias, actual in seen:
            assert attn.group_norm is None and attn.norm_q is None and not attn.norm_cross
            p, y = probs(attn, x, ctx, bias)
            assert torch.allclose(y, actual, atol=1e-4)  # these are the probabilities the layer used
            cond.append(p[2:].mean(1))
            uncond.append(p[:2].mean(1))
    captured = out.captured.cross_maps()[2].reshape(2, 256, -1)
    expected = torch.stack(cond).mean(0)
    assert torch.allclose(captured, expected, atol=1e-5)
    assert (torch.stack(uncond).mean(0) - expected).abs().max() > 100 * 1e-5  # a capture of those would fail


def test_self_attention_and_step_range(random_model):
    spec = CaptureSpec(cross_factors=(), self_factors=(2,), step_range=(0.5, 1.0))
    store = generate_batch(random_model, PROMPTS, [1, 2], steps=4, capture=spec).captured
    maps = store.self_maps()
    assert set(maps) == {2} and maps[2].shape == (2, 256, 256)
    assert torch.allclose(maps[2].sum(-1), torch.ones(2, 256), atol=1e-4)
    assert not store.cross_sum
    # Only the second half of the 4 steps: 2 steps x the number of self-attention layers at 16x16.
    layers = store.self_count[2] // 2
    full = generate_batch(random_model, PROMPTS, [1, 2], steps=4, capture=CaptureSpec((), (2,))).captured
    assert full.self_count[2] == 4 * layers


def test_attention_factors_read_off_the_block_layout(random_model):
    """The toy UNet has attention at 16x16 and 8x8 (factors 2, 4); one laid out as SD 1.5 at 1, 2, 4, 8."""
    from diffusers import UNet2DConditionModel

    assert attention_factors(random_model.unet) == {"cross": (2, 4), "self": (2, 4)}
    assert default_cross_factors(random_model.unet) == (2,)
    sd_layout = UNet2DConditionModel(  # diffusers' default blocks (SD 1.5's), tiny widths
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, cross_attention_dim=8, norm_num_groups=4
    )
    assert attention_factors(sd_layout) == {"cross": (1, 2, 4, 8), "self": (1, 2, 4, 8)}
    assert default_cross_factors(sd_layout) == (1, 2)
    # ...and they are the factors a capture actually fills.
    spec = CaptureSpec(cross_factors=(1, 2, 4, 8), self_factors=(1, 2, 4, 8))
    store = generate_batch(random_model, PROMPTS, [1, 2], steps=1, capture=spec).captured
    assert (tuple(sorted(store.cross_sum)), tuple(sorted(store.self_sum))) == ((2, 4), (2, 4))


def test_annotator_asking_for_missing_attention_fails_at_start_up(random_model):
    check_capture(CaptureSpec(cross_factors=(2,), self_factors=(4,)), random_model.unet)
    with pytest.raises(ValueError, match=r"cross-attention at factors \[1\].*only at factors \[2, 4\]"):
        prepare_annotator(build_annotator("cross_attention", {"factors": [1, 2]}), model=random_model)
    with pytest.raises(ValueError, match=r"self-attention at factors \[1\]"):
        prepare_annotator(build_annotator("self_refined", {"cross_factors": [2], "self_factor": 1}), model=random_model)


def test_default_factors_are_chosen_per_model(random_model):
    ann = build_annotator("cross_attention")
    with pytest.raises(RuntimeError, match=r"prepare_annotator\(annotator, model=model\)"):
        _ = ann.capture
    prepare_annotator(ann, model=random_model)
    assert ann.params.factors == (2,) and ann.capture.cross_factors == (2,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(cross_factors=(3,)), "powers of two"),
        (dict(step_range=(0.6, 0.2)), "start < end"),
    ],
)
def test_bad_spec(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CaptureSpec(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(prompts=[], seeds=[]), "prompts is empty"),
        (dict(height=30), "height=30 must be a positive multiple of 4"),
        (dict(seeds=[1]), "one seed per prompt"),
    ],
)
def test_bad_generation_input_fails_before_model_work(random_model, kwargs, message):
    args = dict(prompts=PROMPTS, seeds=[1, 2], steps=2) | kwargs
    with pytest.raises(ValueError, match=message):
        generate_batch(random_model, **args)


def test_unknown_scheduler_named(random_model):
    with pytest.raises(ValueError, match=r"scheduler='warp' is unknown"):
        load_model(random_model.path, scheduler="warp")
    assert type(load_model(random_model.path, scheduler="euler").scheduler).__name__ == "EulerDiscreteScheduler"


def test_missing_model_folder_says_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no model_index\.json"):
        load_model(tmp_path)

"""Every supported diffusers pipeline runs its own loop under synthaug's capture: SD 2.x, SDXL, PixArt, SD3,
FLUX (SD 1.x: the toy model and tests/test_generation.py).

Each model is a tiny random-weight one built from diffusers' own model classes (as diffusers' tests
build theirs), saved to a folder and loaded by path, as a user's would be.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from synthaug.attention import CaptureSpec, attention_factors
from synthaug.cli import main as cli
from synthaug.generator import generate_batch, load_model
from synthaug.pipelines import PIPELINES, UnsupportedPipelineError
from synthaug.prompts import ObjectTarget, PromptSpec
from synthaug.store import SampleStore

sys.path.insert(0, str(Path(__file__).parent))
import sd_tiny

KINDS = ("sd2", "sdxl", "pixart", "sd3", "flux")
VOCAB = {
    "names": ["background", "cat", "dog", "motorcycle"],
    "palette": [[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200]],
}
PROMPTS = ["a photo of a cat", "a motorcycle in the room"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipelines")
    return {kind: getattr(sd_tiny, f"make_tiny_{kind}")(root / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def models(folders) -> dict:
    return {kind: load_model(path) for kind, path in folders.items()}


@pytest.mark.parametrize("kind", KINDS)
def test_generate_writes_a_store_that_verifies(kind, folders, tmp_path):
    """`synthaug generate --model FOLDER` on each architecture: the pipeline's own loop, maps from its
    denoiser's attention, a store whose samples read back and whose labels are the prompts' classes."""
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "vocabulary": VOCAB,
                "prompts": {"source": "templates", "templates": ["a photo of a {cls}"]},
                "steps": 2,
                "guidance": 4.0,
                "height": 64,
                "width": 64,
                "num": 3,
                "batch_size": 2,
                "method": "cross_attention",
                "annotator": {"factors": [2]},
            }
        )
    )
    store_dir = tmp_path / "store"
    assert cli(["generate", "--config", str(cfg), "--out", str(store_dir), "--model", str(folders[kind])]) == 0
    assert cli(["verify", str(store_dir)]) == 0
    store = SampleStore(store_dir)
    assert len(store) == 3
    for i in range(3):
        s = store.read(i)
        assert s.image.shape == (64, 64, 3) and s.mask.shape == (64, 64)
        prompted = {VOCAB["names"].index(n) for n in VOCAB["names"][1:] if n in s.prompt}
        assert set(np.unique(s.mask).tolist()) <= prompted | {0, 255}
        assert s.fingerprint["pipeline"] == json.loads((folders[kind] / "model_index.json").read_text())["_class_name"]


@pytest.mark.parametrize("kind", KINDS)
def test_capture_fills_the_token_grid_and_leaves_images_unchanged(kind, models):
    model = models[kind]
    f = attention_factors(model.unet)["cross"][0]
    plain = generate_batch(model, PROMPTS, [1, 2], steps=2, guidance=4.0, height=64, width=64)
    out = generate_batch(
        model, PROMPTS, [1, 2], steps=2, guidance=4.0, height=64, width=64, capture=CaptureSpec((f,), (f,))
    )
    assert (plain.images == out.images).all()
    cross, self_ = out.captured.cross_maps()[f], out.captured.self_maps()[f]
    grid = 64 // 8 // f
    assert cross.shape[:3] == (2, grid, grid)
    assert self_.shape == (2, grid * grid, grid * grid)
    # Distributions over the text keys and over the image keys, one row per image token.
    assert torch.allclose(cross.sum(-1), torch.ones(2, grid, grid), atol=1e-4)
    assert torch.allclose(self_.sum(-1), torch.ones(2, grid * grid), atol=1e-4)


def test_sd2_v_prediction_reaches_the_pipelines_loop_and_survives_a_scheduler_choice(folders, models, tmp_path):
    """A v-prediction folder denoises as v-prediction: its images differ from the same weights read as epsilon,
    and a --scheduler choice keeps the folder's prediction type (and beta schedule) instead of the class's."""
    import shutil

    run = dict(prompts=PROMPTS, seeds=[1, 2], steps=2, guidance=4.0, height=64, width=64)
    v = models["sd2"]
    assert v.scheduler.config.prediction_type == "v_prediction"
    euler = load_model(folders["sd2"], scheduler="euler")
    assert type(euler.scheduler).__name__ == "EulerDiscreteScheduler"
    assert euler.scheduler.config.prediction_type == "v_prediction"
    assert euler.scheduler.config.beta_schedule == "scaled_linear"
    eps_folder = tmp_path / "sd2-eps"
    shutil.copytree(folders["sd2"], eps_folder)
    config_file = eps_folder / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "prediction_type": "epsilon"}))
    eps = load_model(eps_folder)
    assert eps.scheduler.config.prediction_type == "epsilon"
    assert (generate_batch(v, **run).images != generate_batch(eps, **run).images).any()
    assert (generate_batch(v, **run).images == generate_batch(load_model(folders["sd2"]), **run).images).all()


@pytest.mark.parametrize("kind", KINDS)
def test_capture_reuses_the_layers_own_projections(models, kind):
    """Capture takes q and k from each layer's own projections (kept by forward hooks) instead of computing them
    again, for a UNet's cross- and self-attention, PixArt's, SD3's joint attention and FLUX's double- and
    single-stream blocks: every projection runs as often as without capture."""
    model = models[kind]
    f = attention_factors(model.unet)["cross"][0]
    counts: dict[str, int] = {}
    handles = []
    for name, module in model.unet.named_modules():
        if name.endswith(("to_q", "to_k", "add_k_proj")):
            handles.append(
                module.register_forward_hook(lambda *_a, name=name: counts.__setitem__(name, counts.get(name, 0) + 1))
            )
    try:
        generate_batch(model, PROMPTS, [1, 2], steps=2, guidance=4.0, height=64, width=64)
        plain, counts = counts, {}
        out = generate_batch(
            model, PROMPTS, [1, 2], steps=2, guidance=4.0, height=64, width=64, capture=CaptureSpec((f,), (f,))
        )
    finally:
        for handle in handles:
            handle.remove()
    assert plain and counts == plain
    assert out.captured.cross_maps()[f].shape[0] == 2
    if kind == "flux":  # both kinds of block were counted
        assert any(n.startswith("single_transformer_blocks") for n in plain)
        assert any(n.startswith("transformer_blocks") and n.endswith("add_k_proj") for n in plain)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_joint_capture_recomputes_projections_a_fused_layer_does_not_expose(models, kind):
    """With q, k and v fused into one projection (diffusers' fuse_qkv_projections), no to_q/to_k call is there to
    keep: capture computes them itself, and its maps are those of the unfused layers."""
    model = models[kind]
    run = dict(
        prompts=PROMPTS, seeds=[1, 2], steps=1, guidance=4.0, height=64, width=64, capture=CaptureSpec((2,), (2,))
    )
    unfused = generate_batch(model, **run).captured
    calls = []
    handles = [
        m.register_forward_hook(lambda *_a: calls.append(1))
        for name, m in model.unet.named_modules()
        if name.endswith("attn.to_q")
    ]
    model.unet.fuse_qkv_projections()
    try:
        assert any(name.endswith("to_qkv") for name, _ in model.unet.named_modules())
        generate_batch(model, **{**run, "capture": None})
        assert not calls  # the fused layers never call to_q
        fused = generate_batch(model, **run).captured
        assert calls  # capture did, to recompute q
    finally:
        model.unet.unfuse_qkv_projections()
        for h in handles:
            h.remove()
    for maps in ("cross_maps", "self_maps"):
        a, b = getattr(unfused, maps)()[2], getattr(fused, maps)()[2]
        assert torch.allclose(a, b, atol=1e-5)


def test_token_positions_of_split_words_under_clip_t5_and_both_sdxl_tokenizers(models):
    """'motorcycle' is three BPE pieces in the tiny CLIP vocabularies and two sentencepiece pieces in the
    tiny T5 one; every piece is a key of the class. SD3's keys are CLIP's 16, then T5's."""
    spec = PromptSpec("a photo of a motorcycle", (ObjectTarget(3, ("motorcycle",)), ObjectTarget(1, ("photo",))), 0)
    clip = [[5, 6, 7], [2]]  # <start> a photo of a motor cycle
    t5 = [[4, 5], [1]]  # ▁a ▁photo ▁of ▁a ▁motor cycle </s>
    assert models["sdxl"].token_groups(spec) == clip
    sdxl = models["sdxl"].pipe
    for tok in (sdxl.tokenizer, sdxl.tokenizer_2):  # the second SDXL tokenizer pads with "!", same positions
        ids = tok("a photo of a motorcycle").input_ids
        assert [ids[i] for i in clip[0]] == tok("motorcycle", add_special_tokens=False).input_ids
    assert models["pixart"].token_groups(spec) == t5
    assert models["flux"].token_groups(spec) == t5
    clip_len = models["sd3"].pipe.tokenizer.model_max_length
    assert models["sd3"].token_groups(spec) == [c + [clip_len + i for i in t] for c, t in zip(clip, t5)]


def test_pixart_positions_are_those_of_the_lowercased_prompt_it_encodes(models):
    spec = PromptSpec("A photo of a Cat", (ObjectTarget(1, ("cat",)),), 0)
    tok = models["pixart"].tokenizer
    ids = tok("a photo of a cat").input_ids
    [pos] = models["pixart"].token_groups(spec)
    assert [ids[i] for i in pos] == tok("cat", add_special_tokens=False).input_ids


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(b, tokens, heads * d) -> (b, tokens, heads, d)."""
    return t.view(t.shape[0], -1, heads, t.shape[-1] // heads)


def _norm(module, t: torch.Tensor) -> torch.Tensor:
    return t if module is None else module(t)


def _joint_layers(denoiser) -> list:
    return [m for name, m in denoiser.named_modules() if name.endswith(".attn")]


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_joint_attention_maps_are_the_layers_own_probabilities_on_the_conditional_rows(kind, models):
    """The captured cross map equals, averaged over every layer (FLUX: double- and single-stream), the
    image-query x text-key block of the full joint softmax each layer computes (checked: it reproduces the layer's
    own output), renormalised over the text keys, on the prompts' rows only (SD3: the negative prompts' rows
    differ and are not captured); the self map, the image-query x image-key block renormalised likewise."""
    from diffusers.models.embeddings import apply_rotary_emb

    model = models[kind]
    seen: list[tuple] = []

    def record(module, args, kwargs, out):
        seen.append((module, args, kwargs, out))

    handles = [m.register_forward_hook(record, with_kwargs=True) for m in _joint_layers(model.unet)]
    try:
        out = generate_batch(
            model, PROMPTS, [1, 2], steps=1, guidance=4.0, height=64, width=64, capture=CaptureSpec((2,), (2,))
        )
    finally:
        for h in handles:
            h.remove()
    n_image = (64 // 8 // 2) ** 2
    blocks, others, selfs = [], [], []
    with torch.no_grad():
        for attn, args, kwargs, actual in seen:
            x = args[0] if args else kwargs["hidden_states"]
            ctx = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
            rotary = kwargs.get("image_rotary_emb")
            b, h = x.shape[0], attn.heads
            if ctx is not None:  # double-stream / MMDiT: own projections for the text
                qi, ki, vi = (_heads(m(x), h) for m in (attn.to_q, attn.to_k, attn.to_v))
                qt, kt, vt = (_heads(m(ctx), h) for m in (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
                qi, ki = _norm(attn.norm_q, qi), _norm(attn.norm_k, ki)
                qt, kt = _norm(attn.norm_added_q, qt), _norm(attn.norm_added_k, kt)
                text_first = kind == "flux"
                q = torch.cat([qt, qi] if text_first else [qi, qt], 1)
                k = torch.cat([kt, ki] if text_first else [ki, kt], 1)
                v = torch.cat([vt, vi] if text_first else [vi, vt], 1)
                n_text = ctx.shape[1]
            else:  # single-stream: [text, image] as one sequence
                q, k, v = (_heads(m(x), h) for m in (attn.to_q, attn.to_k, attn.to_v))
                q, k = _norm(attn.norm_q, q), _norm(attn.norm_k, k)
                text_first, n_text = True, x.shape[1] - n_image
            if rotary is not None:
                q, k = apply_rotary_emb(q, rotary, sequence_dim=1), apply_rotary_emb(k, rotary, sequence_dim=1)
            q, k, v = (t.transpose(1, 2).float() for t in (q, k, v))
            p = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
            y = (p @ v).transpose(1, 2).reshape(b, -1, h * v.shape[-1])
            image_rows = slice(n_text, None) if text_first else slice(0, n_image)
            text_cols = slice(0, n_text) if text_first else slice(n_image, None)
            if ctx is not None:
                expect = attn.to_out[0](y[:, image_rows].to(x.dtype))
                assert torch.allclose(expect, actual[0], atol=1e-4)  # the probabilities the layer used
            else:  # a single-stream layer returns the attention itself; its block projects it
                assert torch.allclose(y.to(x.dtype), actual, atol=1e-4)
            block = p[:, :, image_rows, text_cols]
            block = (block / block.sum(-1, keepdim=True)).mean(1)
            image_block = p[:, :, image_rows, image_rows]
            image_block = (image_block / image_block.sum(-1, keepdim=True)).mean(1)
            if kind == "sd3":
                blocks.append(block[2:])
                others.append(block[:2])
                selfs.append(image_block[2:])
            else:
                blocks.append(block)
                selfs.append(image_block)
    assert seen and out.captured.cross_count[2] == out.captured.self_count[2] == len(seen)  # every layer
    captured = out.captured.cross_maps()[2].reshape(2, n_image, -1)
    expected = torch.stack(blocks).mean(0)
    assert torch.allclose(captured, expected, atol=1e-5)
    assert torch.allclose(
        out.captured.self_maps()[2].reshape(2, n_image, n_image), torch.stack(selfs).mean(0), atol=1e-5
    )
    if others:
        assert (torch.stack(others).mean(0) - expected).abs().max() > 1e-3  # a capture of those would fail


def test_an_unsupported_pipeline_is_named_before_any_weights_load(tmp_path):
    """An unconditional pipeline and an image-to-image one: the error names the class and the supported
    kinds; the folders hold no weights at all, so nothing was loaded."""
    for cls in ("DDPMPipeline", "StableDiffusionImg2ImgPipeline"):
        folder = tmp_path / cls
        folder.mkdir()
        (folder / "model_index.json").write_text(json.dumps({"_class_name": cls, "unet": ["diffusers", "UNet2DModel"]}))
        with pytest.raises(UnsupportedPipelineError) as err:
            load_model(folder)
        assert cls in str(err.value) and all(name in str(err.value) for name in PIPELINES)


def test_cli_names_an_unsupported_pipeline(tmp_path, capsys):
    folder = tmp_path / "ddpm"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(yaml.safe_dump({"vocabulary": VOCAB, "prompts": {"source": "templates"}, "num": 1}))
    assert cli(["generate", "--config", str(cfg), "--out", str(tmp_path / "s"), "--model", str(folder)]) == 2
    assert "DDPMPipeline" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_pipeline_object_is_driven_as_its_folder_would_be(folders, models):
    from diffusers import DDPMPipeline, DDPMScheduler, DiffusionPipeline, UNet2DModel

    pipe = DiffusionPipeline.from_pretrained(folders["pixart"], low_cpu_mem_usage=False)
    model = load_model(pipe)
    a = generate_batch(model, PROMPTS, [3, 4], steps=2, height=64, width=64)
    b = generate_batch(models["pixart"], PROMPTS, [3, 4], steps=2, height=64, width=64)
    assert (a.images == b.images).all()
    unet = UNet2DModel(
        sample_size=8,
        block_out_channels=(8, 8),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
    )
    unconditional = DDPMPipeline(unet, DDPMScheduler())
    with pytest.raises(UnsupportedPipelineError, match="DDPMPipeline"):
        load_model(unconditional)


def test_a_prompt_longer_than_a_tokenizer_takes_fails_naming_it_before_any_model_work(models):
    """The tiny CLIP takes 16 tokens: SDXL fails naming the prompt. SD3 cuts its CLIP block off as its
    pipeline does and reads the word past it from its T5 block (256 keys) alone; past T5's end it fails."""
    long = "a photo of a cat " * 5 + "and a dog"
    spec = PromptSpec(long, (ObjectTarget(2, ("dog",)),), 0)
    with pytest.raises(ValueError, match="is 30 tokens long for CLIPTokenizer, which takes 16") as err:
        models["sdxl"].token_groups(spec)
    assert long in str(err.value)
    clip_len = models["sd3"].pipe.tokenizer.model_max_length
    [dog] = models["sd3"].token_groups(spec)
    t5 = models["sd3"].tokenizers[1]
    assert dog and all(i >= clip_len for i in dog)  # T5 keys only
    assert [t5(long.lower()).input_ids[i - clip_len] for i in dog] == t5("dog", add_special_tokens=False).input_ids
    too_long = PromptSpec("a photo of a cat " * 60 + "and a dog", (ObjectTarget(2, ("dog",)),), 0)
    with pytest.raises(ValueError, match="tokens long for T5Tokenizer"):
        models["sd3"].token_groups(too_long)


def test_a_batch_layout_other_than_expected_fails_instead_of_capturing_wrong_rows(models):
    """If a pipeline ran guidance as separate calls (or none), slicing 'the last half' would capture the
    wrong rows: the denoiser's batch is checked at every call."""
    model = models["sdxl"]
    wrong = dataclasses.replace(model, arch=dataclasses.replace(model.arch, guidance_batch=False))
    with pytest.raises(RuntimeError, match="expected 2"):
        generate_batch(wrong, PROMPTS, [1, 2], steps=1, guidance=4.0, height=64, width=64, capture=CaptureSpec((2,)))


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return sd_tiny.make_tiny_sd(tmp_path_factory.mktemp("sd"))


def test_a_lora_file_loads_through_the_pipelines_own_loader_at_its_scale(tiny_sd, folders, tmp_path):
    """Scale 0 gives the base model's images exactly, scale 1 other ones; the samples' fingerprint names it.
    A LoRA made for another model fails naming the file: one whose shapes differ (the loader's error), and
    one whose weights name no module of the pipeline (diffusers only warns: it would silently do nothing)."""
    pytest.importorskip("peft")
    from safetensors.torch import save_file

    from synthaug.generator import LoraWeights

    lora = sd_tiny.make_tiny_lora(tiny_sd, tmp_path / "lora")
    run = dict(prompts=["a photo of a cat"], seeds=[1], steps=2, height=64, width=64)
    base = generate_batch(load_model(tiny_sd), **run).images
    off = load_model(tiny_sd, loras=[LoraWeights(lora, 0.0)])
    on = load_model(tiny_sd, loras=[LoraWeights(lora, 1.0)])
    assert (generate_batch(off, **run).images == base).all()
    assert (generate_batch(on, **run).images != base).any()
    assert on.fingerprint()["lora"] == [{"path": str(lora), "scale": 1.0}]

    other = sd_tiny.make_tiny_lora(folders["sdxl"], tmp_path / "lora_xl")
    with pytest.raises(ValueError, match="size mismatch") as err:
        load_model(tiny_sd, loras=[LoraWeights(other)])
    assert str(other) in str(err.value)
    foreign = tmp_path / "foreign.safetensors"
    key = "transformer.transformer_blocks.0.attn1.to_q.lora_{}.weight"
    save_file({key.format("A"): torch.randn(4, 24), key.format("B"): torch.randn(24, 4)}, foreign)
    with pytest.raises(ValueError, match="none of its weights names one of the pipeline's modules") as err:
        load_model(tiny_sd, loras=[LoraWeights(foreign)])
    assert str(foreign) in str(err.value)


def test_lora_config_key(tiny_sd, tmp_path, capsys):
    """`lora:` in gen.yaml: a missing file fails at start naming the key and the value; a good one generates."""
    pytest.importorskip("peft")
    lora = sd_tiny.make_tiny_lora(tiny_sd, tmp_path / "lora")
    base = {"vocabulary": VOCAB, "prompts": {"source": "templates"}, "num": 2, "steps": 2, "height": 64, "width": 64}
    cfg = tmp_path / "gen.yaml"
    for bad, message in (
        (str(tmp_path / "nope.safetensors"), "key 'lora' names"),
        ([{"path": str(lora), "scale": "high"}], "key 'lora' has"),
    ):
        cfg.write_text(yaml.safe_dump({**base, "lora": bad}))
        assert cli(["generate", "--config", str(cfg), "--out", str(tmp_path / "bad"), "--model", str(tiny_sd)]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "bad").exists()
    cfg.write_text(yaml.safe_dump({**base, "lora": [{"path": str(lora), "scale": 0.5}]}))
    assert cli(["generate", "--config", str(cfg), "--out", str(tmp_path / "s"), "--model", str(tiny_sd)]) == 0
    assert SampleStore(tmp_path / "s").read(0).fingerprint["lora"] == [{"path": str(lora), "scale": 0.5}]


def _capture_windows(model, steps: int, step_range: tuple[float, float]) -> tuple[int, int]:
    """(captured cross layers, expected): each denoiser call k of `total` is a step, inside `step_range` when
    (k + 0.5) / total is; expected is that number of calls times the layers of one call."""
    # the layers with cross-attention: PixArt's attn2, FLUX's joint and single-stream attn
    layers = sum(name.split(".")[-2] in ("attn", "attn2") for name in model.unet.attn_processors)
    calls = []
    handle = model.unet.register_forward_pre_hook(lambda *a: calls.append(len(model.pipe.scheduler.timesteps)))
    try:
        out = generate_batch(
            model,
            PROMPTS,
            [1, 2],
            steps=steps,
            guidance=4.0,
            height=64,
            width=64,
            capture=CaptureSpec((2,), step_range=step_range),
        )
    finally:
        handle.remove()
    total = calls[0]
    assert len(calls) == total and layers
    inside = sum(step_range[0] <= (k + 0.5) / total < step_range[1] for k in range(total))
    return out.captured.cross_count.get(2, 0), inside * layers


@pytest.mark.parametrize("scheduler", ["HeunDiscreteScheduler", "PNDMScheduler"])
def test_pixart_steps_are_its_denoiser_calls_under_a_sampler_with_more_timesteps_than_steps(scheduler, folders):
    """PixArt calls its (legacy) callback with i // scheduler.order and only after warm-up: the capture window
    must follow the denoiser's calls, not the callback's index (Heun: 7 calls for 4 steps; PNDM: 13)."""
    got, expected = _capture_windows(load_model(folders["pixart"], scheduler=scheduler), 4, (0.5, 1.0))
    assert expected > 0 and got == expected


def test_flux_with_dev_s_dynamically_shifted_scheduler_generates_and_captures_every_step(folders):
    """FLUX.1-dev's scheduler shifts its timesteps by a `mu` only the pipeline computes (from the image size):
    a bare set_timesteps(steps) raises, so the step count must come from the pipeline's own timesteps."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    model = load_model(folders["flux"])
    dev = dict(shift=3.0, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    model.pipe.scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, **dev)  # FLUX.1-dev's
    got, expected = _capture_windows(model, 3, (0.0, 1.0))
    assert expected > 0 and got == expected


def test_a_pipeline_object_is_left_as_it_was_by_a_failed_or_repeated_lora_load(tiny_sd, folders, tmp_path):
    """load_model(pipe, loras) twice, or with a second LoRA that does not fit: the pipeline a user passed in
    carries only the adapters of the last successful call (none after a failure), so samples never carry a
    LoRA their fingerprint does not name; adapters of the user's own are refused, not switched off unseen."""
    pytest.importorskip("peft")
    from diffusers import DiffusionPipeline

    from synthaug.generator import LoraWeights

    lora = sd_tiny.make_tiny_lora(tiny_sd, tmp_path / "lora")
    other = sd_tiny.make_tiny_lora(folders["sdxl"], tmp_path / "lora_xl")
    pipe = DiffusionPipeline.from_pretrained(tiny_sd, low_cpu_mem_usage=False)
    run = dict(prompts=["a photo of a cat"], seeds=[1], steps=2, height=64, width=64)
    base = generate_batch(load_model(pipe), **run).images
    assert (generate_batch(load_model(pipe, loras=[LoraWeights(lora)]), **run).images != base).any()
    again = load_model(pipe)  # no LoRA asked for now: none applied, none in the fingerprint
    assert (generate_batch(again, **run).images == base).all() and "lora" not in again.fingerprint()
    load_model(pipe, loras=[LoraWeights(lora)])
    load_model(pipe, loras=[LoraWeights(lora)])  # the same LoRA again loads (no 'adapter name in use')
    with pytest.raises(ValueError, match="does not fit"):
        load_model(pipe, loras=[LoraWeights(lora), LoraWeights(other)])
    assert not any(pipe.get_list_adapters().values())  # nothing half-loaded
    assert (generate_batch(load_model(pipe), **run).images == base).all()
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="mine")
    with pytest.raises(ValueError, match=r"already has LoRA adapters \['mine'\]"):
        load_model(pipe, loras=[LoraWeights(lora)])


def test_generate_leaves_no_store_when_the_model_or_a_prompt_fails(tiny_sd, tmp_path, capsys):
    """An annotator factor the model lacks, or a prompt too long for its tokenizer: exit 2 and no store."""
    base = {"vocabulary": VOCAB, "steps": 2, "height": 64, "width": 64, "num": 2}
    cases = [
        ({"prompts": {"source": "templates"}, "method": "cross_attention", "annotator": {"factors": [8]}}, "factors"),
        ({"prompts": {"source": "templates", "templates": ["a photo of a cat and " * 4 + "a {cls}"]}}, "tokens long"),
    ]
    for extra, message in cases:
        cfg = tmp_path / "gen.yaml"
        cfg.write_text(yaml.safe_dump({**base, **extra}))
        out = tmp_path / "store"
        assert cli(["generate", "--config", str(cfg), "--out", str(out), "--model", str(tiny_sd)]) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()

"""Single-file checkpoints (the original Stable Diffusion layout most fine-tunes ship as) load through the pipeline
class's own `from_single_file`, with a local diffusers folder for the configs; nothing is downloaded."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from synthaug.cli import main as cli
from synthaug.store import SampleStore

sys.path.insert(0, str(Path(__file__).parent))
import sd_tiny
from ldm_single_file import save_ldm_checkpoint

VOCAB = {"names": ["background", "cat", "dog"], "palette": [[0, 0, 0], [200, 0, 0], [0, 200, 0]]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny SD folder, its original-format checkpoint, and a copy of the folder without any weights."""
    root = tmp_path_factory.mktemp("single")
    folder = sd_tiny.make_tiny_sd(root)
    checkpoint = save_ldm_checkpoint(folder, root / "tiny-sd.safetensors")
    return {"folder": folder, "checkpoint": checkpoint, "configs": configs_only(folder, root / "configs-only")}


def gen_yaml(path: Path, **extra) -> Path:
    data = {
        "vocabulary": VOCAB,
        "prompts": {"source": "templates", "templates": ["a photo of a {cls}"]},
        "steps": 2,
        "guidance": 4.0,
        "height": 64,
        "width": 64,
        "num": 2,
        "batch_size": 2,
        "annotator": {"factors": [2]},
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_single_file_checkpoint_generates_what_its_folder_generates(tiny, tmp_path):
    """The checkpoint, read with a configs-only folder (no weights there to fall back on), gives the same images
    and labels as the diffusers folder it was written from, and the store says which file made them."""
    cfg = gen_yaml(tmp_path / "gen.yaml")
    single, folder = tmp_path / "single", tmp_path / "folder"
    args = ["--model", str(tiny["checkpoint"]), "--model-config", str(tiny["configs"])]
    assert cli(["generate", "--config", str(cfg), "--out", str(single), *args]) == 0
    assert cli(["generate", "--config", str(cfg), "--out", str(folder), "--model", str(tiny["folder"])]) == 0
    assert cli(["verify", str(single)]) == 0
    a, b = SampleStore(single), SampleStore(folder)
    for i in range(2):
        x, y = a.read(i), b.read(i)
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
    assert a.read(0).fingerprint["model"] == str(tiny["checkpoint"])


def configs_only(folder: Path, out: Path) -> Path:
    """A copy of a diffusers folder with every weight file removed: configs, tokenizers and scheduler only."""
    shutil.copytree(folder, out)
    for weights in [*out.rglob("*.safetensors"), *out.rglob("*.bin")]:
        weights.unlink()
    return out


@pytest.mark.parametrize(
    ("kind", "build", "text"),
    [
        ("sd2", sd_tiny.make_tiny_sd2, "open_clip"),
        ("sdxl", lambda root: sd_tiny.make_tiny_sdxl(root, width_2=48), None),
    ],
)
def test_sd2_and_sdxl_single_files_generate_what_their_folders_generate(tmp_path, kind, build, text):
    """SD 2.x stores its text encoder in OpenCLIP's layout (fused q/k/v, ``cond_stage_model.model``), SDXL its two
    under ``conditioner.embedders``; each file, read with a configs-only folder, gives the images and labels of
    the diffusers folder it was written from (SD 2.x through its v-prediction scheduler, which the folder keeps)."""
    from safetensors import safe_open

    folder = build(tmp_path / "model")
    checkpoint = save_ldm_checkpoint(folder, tmp_path / f"{kind}.safetensors", text=text)
    with safe_open(str(checkpoint), "pt") as f:
        keys = set(f.keys())
    if kind == "sd2":  # the original OpenCLIP names, not transformers' (the layout diffusers must convert)
        assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys
        assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)
    else:
        assert (
            "conditioner.embedders.1.model.text_projection" in keys
            and "model.diffusion_model.label_emb.0.0.weight" in keys
        )
    configs = configs_only(folder, tmp_path / "configs")
    cfg = gen_yaml(tmp_path / "gen.yaml")
    single, plain = tmp_path / "single", tmp_path / "folder"
    args = ["--model", str(checkpoint), "--model-config", str(configs)]
    assert cli(["generate", "--config", str(cfg), "--out", str(single), *args]) == 0
    assert cli(["generate", "--config", str(cfg), "--out", str(plain), "--model", str(folder)]) == 0
    assert cli(["verify", str(single)]) == 0
    a, b = SampleStore(single), SampleStore(plain)
    for i in range(2):
        x, y = a.read(i), b.read(i)
        assert np.array_equal(x.image, y.image) and np.array_equal(x.mask, y.mask)
    if kind == "sd2":  # the file says nothing of its prediction type: the folder's scheduler must
        from synthaug.generator import load_model

        assert load_model(checkpoint, config=configs).pipe.scheduler.config.prediction_type == "v_prediction"


def test_model_config_in_gen_yaml(tiny, tmp_path):
    cfg = gen_yaml(tmp_path / "gen.yaml", model=str(tiny["checkpoint"]), model_config=str(tiny["configs"]))
    assert cli(["generate", "--config", str(cfg), "--out", str(tmp_path / "s")]) == 0
    assert len(SampleStore(tmp_path / "s")) == 2


def test_a_single_file_without_model_config_is_named_before_any_store(tiny, tmp_path, capsys):
    cfg = gen_yaml(tmp_path / "gen.yaml")
    out = tmp_path / "s"
    assert cli(["generate", "--config", str(cfg), "--out", str(out), "--model", str(tiny["checkpoint"])]) == 2
    err = capsys.readouterr().err
    assert "single-file checkpoint: set model_config" in err and "--model-config" in err and not out.exists()


def test_a_file_that_is_no_checkpoint_and_a_checkpoint_of_another_model_are_named(tiny, tmp_path, capsys):
    cfg = gen_yaml(tmp_path / "gen.yaml")
    text = tmp_path / "weights.txt"
    text.write_text("not a checkpoint")
    assert cli(["generate", "--config", str(cfg), "--out", str(tmp_path / "a"), "--model", str(text)]) == 2
    assert "not a single-file checkpoint" in capsys.readouterr().err
    # the same UNet layout with other widths: the checkpoint's shapes do not fit the folder's configs
    other = tmp_path / "wider"
    shutil.copytree(tiny["configs"], other)
    unet_cfg = json.loads((other / "unet" / "config.json").read_text())
    unet_cfg["block_out_channels"] = [16, 64]
    (other / "unet" / "config.json").write_text(json.dumps(unet_cfg))
    args = ["--model", str(tiny["checkpoint"]), "--model-config", str(other)]
    assert cli(["generate", "--config", str(cfg), "--out", str(tmp_path / "b"), *args]) == 2
    err = capsys.readouterr().err
    assert f"single-file checkpoint {tiny['checkpoint']} does not load" in err and str(other) in err
    assert not (tmp_path / "b").exists()


def test_a_plain_ckpt_loads_and_a_controlnet_comes_from_the_folder(tiny, tmp_path):
    """A .ckpt ({'state_dict': ...}, read with weights_only) generates what the .safetensors does; with a
    ControlNet pipeline's folder as model_config, its ControlNet joins the file's base model (layouts)."""
    import torch
    from safetensors.torch import load_file

    ckpt = tmp_path / "tiny-sd.ckpt"
    torch.save({"state_dict": load_file(str(tiny["checkpoint"]))}, ckpt)
    cfg = gen_yaml(tmp_path / "gen.yaml")
    for name, model in (("a", tiny["checkpoint"]), ("b", ckpt)):
        args = ["--model", str(model), "--model-config", str(tiny["configs"])]
        assert cli(["generate", "--config", str(cfg), "--out", str(tmp_path / name), *args]) == 0
    assert np.array_equal(SampleStore(tmp_path / "a").read(1).image, SampleStore(tmp_path / "b").read(1).image)

    controlnet = sd_tiny.make_tiny_controlnet(tmp_path / "cn")
    base = save_ldm_checkpoint(controlnet, tmp_path / "cn-base.safetensors")
    masks = tmp_path / "masks"
    masks.mkdir()
    from PIL import Image

    Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8), mode="L").save(masks / "m.png")
    data = yaml.safe_load(gen_yaml(tmp_path / "layout.yaml").read_text())
    del data["prompts"]
    data["layout"] = {"masks": str(masks), "template": "{cls}"}
    (tmp_path / "layout.yaml").write_text(yaml.safe_dump(data))
    args = ["--model", str(base), "--model-config", str(controlnet)]
    assert cli(["generate", "--config", str(tmp_path / "layout.yaml"), "--out", str(tmp_path / "c"), *args]) == 0
    assert SampleStore(tmp_path / "c").read(0).mask.shape == (64, 64)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no index", "with its model_index.json"),
        ("folder model", "model_config is only for a single-file checkpoint"),
        ("typo", "no such checkpoint file"),
        ("size", "height=60 must be a positive multiple of 16"),
    ],
)
def test_model_config_mistakes_are_named_before_any_store(tiny, tmp_path, capsys, case, message):
    cfg = gen_yaml(tmp_path / "gen.yaml", height=60 if case == "size" else 64)
    model, config = tiny["checkpoint"], tiny["configs"]
    if case == "no index":
        config = tmp_path / "empty"
        config.mkdir()
    elif case == "folder model":
        model = tiny["folder"]
    elif case == "typo":
        model = tmp_path / "typo.safetensors"
    out = tmp_path / "s"
    args = ["--model", str(model), "--model-config", str(config)]
    assert cli(["generate", "--config", str(cfg), "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_a_truncated_checkpoint_is_named_before_any_store(tiny, tmp_path, capsys):
    """A download cut short: the checkpoint and its config folder are named, and no store is made."""
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(tiny["checkpoint"].read_bytes()[:4096])
    cfg = gen_yaml(tmp_path / "gen.yaml")
    args = ["--model", str(cut), "--model-config", str(tiny["configs"])]
    assert cli(["generate", "--config", str(cfg), "--out", str(tmp_path / "s"), *args]) == 2
    assert f"single-file checkpoint {cut} does not load" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()

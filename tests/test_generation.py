"""Generation end to end: gen.yaml -> samples in a store, the Stable Diffusion folder path, bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from synthaug.cli import main as cli
from synthaug.config import GenerationConfig
from synthaug.prompts import ObjectTarget, PromptSpec, WordNotInPromptError
from synthaug.store import SampleStore

sys.path.insert(0, str(Path(__file__).parent))
from sd_tiny import make_tiny_sd

VOCAB = {
    "names": ["background", "cat", "dog", "motorcycle"],
    "palette": [[0, 0, 0], [200, 0, 0], [0, 200, 0], [0, 0, 200]],
}


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return make_tiny_sd(tmp_path_factory.mktemp("sd"))


def _write(tmp_path: Path, **cfg) -> Path:
    path = tmp_path / "gen.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_stable_diffusion_folder_end_to_end(tiny_sd, tmp_path):
    """A Stable Diffusion folder (VAE latents, CLIP BPE tokenizer) through the same --model PATH a user gives."""
    cfg = _write(
        tmp_path,
        vocabulary=VOCAB,
        prompts={"source": "templates", "templates": ["a photo of a {cls}"], "classes_per_prompt": [1, 2]},
        steps=2,
        guidance=7.5,
        height=64,
        width=64,
        num=3,
        batch_size=2,
        method="self_refined",
        annotator={"cross_factors": [1], "self_factor": 1},
        refine="edge",
    )
    assert cli(["generate", "--config", str(cfg), "--out", str(tmp_path / "store"), "--model", str(tiny_sd)]) == 0
    store = SampleStore(tmp_path / "store")
    assert len(store) == 3
    for i in range(3):
        s = store.read(i)
        assert s.image.shape == (64, 64, 3) and s.mask.shape == (64, 64)
        assert s.fingerprint["model"] == str(tiny_sd) and s.fingerprint["annotator"] == "self_refined"
        # Labels are the prompt's classes, background (0) or ignore; instances are of the prompt's classes;
        # the quality figures describe this mask.
        prompted = {VOCAB["names"].index(n) for n in VOCAB["names"][1:] if n in s.prompt}
        assert set(np.unique(s.mask).tolist()) <= prompted | {0, 255}
        assert {inst.class_id for inst in s.instances} <= prompted
        assert s.quality["ignore_share"] == pytest.approx(float((s.mask == 255).mean()))
        assert s.quality["foreground_share"] == pytest.approx(float(((s.mask != 0) & (s.mask != 255)).mean()))
        assert 0 <= s.quality["objects_found"] <= 1
    # "motorcycle" is three BPE tokens in this tokenizer; its prompt still annotates.
    assert any("motorcycle" in r["prompt"] for r in store.records)


def test_a_vocabulary_whose_background_is_class_3(tmp_path):
    """Unprompted pixels take the vocabulary's background id, wherever it sits; no instance is background."""
    vocab = {
        "names": ["circle", "square", "triangle", "background"],
        "palette": [[255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 0]],
        "background": "background",
    }
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "vocabulary": vocab,
                "prompts": {"source": "templates", "templates": ["a red {cls} on plain"]},
                "num": 6,
                "batch_size": 6,
                "steps": 10,
                "annotator": {"factors": [2]},
                "min_instance_area": 0.01,
            }
        )
    )
    assert cli(["generate", "--config", str(cfg), "--out", str(tmp_path / "store")]) == 0
    store = SampleStore(tmp_path / "store")
    for i in range(len(store)):
        s = store.read(i)
        values, counts = np.unique(s.mask, return_counts=True)
        assert values[counts.argmax()] == 3, (s.prompt, dict(zip(values.tolist(), counts.tolist())))
        assert s.instances and all(inst.class_id != 3 for inst in s.instances)
        assert 0 < s.quality["foreground_share"] < 0.6  # the background is not counted as an object
    assert cli(["verify", str(tmp_path / "store")]) == 0


def test_toy_generation_job(tmp_path):
    cfg = _write(tmp_path, num=4, batch_size=4, steps=3)
    assert cli(["generate", "--config", str(cfg), "--out", str(tmp_path / "store")]) == 0
    store = SampleStore(tmp_path / "store")
    assert len(store) == 4 and store.read(0).image.shape == (32, 32, 3)
    assert cli(["verify", str(tmp_path / "store")]) == 0


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        (dict(scheduler="warp"), "scheduler='warp' is unknown"),
        (dict(height=30), "height=30 must be a positive multiple of 4"),
        (dict(steps=0), "key 'steps' must be an integer >= 1"),
        (dict(stepz=3), "unknown key 'stepz'"),
        (dict(method="magic"), "key 'method' must be one of"),
        (dict(annotator={"thresh": 0.5}), "annotator.thresh is not a parameter"),
        (dict(vocabulary=VOCAB, prompts={"source": "templates", "templates": ["a photo"]}), "lack the '{cls}'"),
    ],
)
def test_bad_config_fails_before_any_model_work(tmp_path, capsys, cfg, message):
    path = _write(tmp_path, **cfg)
    assert cli(["generate", "--config", str(path), "--out", str(tmp_path / "store")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "store").exists()  # nothing was created


def test_sd_size_rule_uses_the_vae_factor(tiny_sd, tmp_path, capsys):
    path = _write(tmp_path, vocabulary=VOCAB, prompts={"source": "templates"}, height=40, width=64)
    assert cli(["generate", "--config", str(path), "--out", str(tmp_path / "s"), "--model", str(tiny_sd)]) == 2
    assert "height=40 must be a positive multiple of 16" in capsys.readouterr().err


def test_class_not_in_prompt_and_empty_prompts(toy_model):
    from synthaug.annotators import build_annotator
    from synthaug.annotators.pipeline import AnnotationPipeline
    from synthaug.generator import generate_samples
    from synthaug.toy.world import TOY_VOCABULARY

    ann = AnnotationPipeline(build_annotator("cross_attention"), TOY_VOCABULARY)
    bad = PromptSpec("a red circle on plain", (ObjectTarget(2, ("square",)),), seed=1)
    with pytest.raises(WordNotInPromptError, match="'square' is not in the prompt"):
        next(generate_samples(toy_model, [bad], ann))
    with pytest.raises(ValueError, match="prompts is empty"):
        next(generate_samples(toy_model, [], ann))


def test_captions_with_classes_appended(tmp_path):
    cap = tmp_path / "captions.tsv"
    cap.write_text("a cat sleeping on a sofa\tcat\nmy dog and a motorcycle\tdog,motorcycle\n")
    vocab = dict(VOCAB, synonyms={"motorcycle": ["motorbike"]})  # appended by its prompt word, as SD knows it
    cfg = GenerationConfig.from_dict(
        {"vocabulary": vocab, "prompts": {"source": "captions", "captions_file": str(cap)}, "num": 3}
    )
    specs = cfg.prompt_specs()
    assert [s.text for s in specs] == [
        "a cat sleeping on a sofa, cat",
        "my dog and a motorcycle, dog, motorbike",
        "a cat sleeping on a sofa, cat",
    ]
    assert [t.class_id for t in specs[1].targets] == [2, 3]
    bad = tmp_path / "bad.tsv"
    bad.write_text("no tab here\n")
    with pytest.raises(ValueError, match="expected 'caption<TAB>class1,class2'"):
        GenerationConfig.from_dict(
            {"vocabulary": VOCAB, "prompts": {"source": "captions", "captions_file": str(bad)}}
        ).prompt_specs()


def test_template_prompts_use_synonyms_and_balance_classes():
    vocab = dict(VOCAB, synonyms={"motorcycle": ["motorbike"]})
    cfg = GenerationConfig.from_dict({"vocabulary": vocab, "prompts": {"source": "templates"}, "num": 6})
    specs = cfg.prompt_specs()
    assert [s.text for s in specs[:3]] == ["a photo of a cat", "a photo of a dog", "a photo of a motorbike"]
    assert specs[2].targets[0].words == ("motorbike",)
    assert len({s.seed for s in specs}) == 6
    # Balanced: each of the 3 foreground classes is prompted twice in 6 prompts; the background never.
    assert sorted(t.class_id for s in specs for t in s.targets) == [1, 1, 2, 2, 3, 3]


def test_learned_decoder_on_a_stable_diffusion_folder(tiny_sd, tmp_path):
    """train-annotator and generation with `method: decoder` through a VAE model with a BPE tokenizer."""
    import numpy as np
    from PIL import Image

    from synthaug.annotators.decoder_file import load_decoder
    from synthaug.imageio import mask_to_png

    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    (tmp_path / "ann").mkdir()
    for i in range(4):
        mask = np.zeros((64, 64), np.uint8)
        y, x = rng.integers(0, 32, 2)
        mask[y : y + 24, x : x + 24] = 1 + i % 3
        image = np.asarray(VOCAB["palette"], np.uint8)[mask] // 2 + rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(image).save(tmp_path / "img" / f"{i}.jpg")
        mask_to_png(mask, VOCAB["palette"]).save(tmp_path / "ann" / f"{i}.png")
    prompts = {"source": "templates", "templates": ["a photo of a {cls}"]}
    cfg = _write(tmp_path, vocabulary=VOCAB, prompts=prompts, steps=2, num=2, batch_size=2, height=64, width=64)
    out = tmp_path / "decoder.safetensors"
    args = ["train-annotator", "--model", str(tiny_sd), "--config", str(cfg), "--images", str(tmp_path / "img")]
    args += ["--masks", str(tmp_path / "ann"), "--out", str(out), "--iterations", "4", "--attention-factors", "1"]
    assert cli([*args, "--val-fraction", "0.25", "--width", "16"]) == 0
    saved = load_decoder(out)
    assert saved.cfg.feature_factors == (1, 2) and saved.cfg.class_names == tuple(VOCAB["names"])
    assert saved.record["train_images"] == 3 and saved.record["heldout_images"] == 1
    gen = _write(
        tmp_path,
        vocabulary=VOCAB,
        prompts=prompts,
        steps=2,
        num=2,
        batch_size=2,
        height=64,
        width=64,
        method="decoder",
        annotator={"path": str(out)},
    )
    assert cli(["generate", "--config", str(gen), "--out", str(tmp_path / "store"), "--model", str(tiny_sd)]) == 0
    store = SampleStore(tmp_path / "store")
    assert len(store) == 2 and store.read(0).mask.shape == (64, 64)

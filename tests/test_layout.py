"""Layouts through a ControlNet (FreeMask's route): real label masks lay out generated images, and give the label.

The models are tiny random-weight SD and SDXL ControlNet pipelines built from diffusers' own classes
(ControlNetModel.from_unet), saved and loaded by path; the layouts are the toy dataset's label PNGs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from synthaug.augment import resize_mask
from synthaug.cli import main as cli
from synthaug.config import ConfigError, GenerationConfig
from synthaug.generator import load_model
from synthaug.imageio import read_mask
from synthaug.layout import LayoutSettings, layout_prompts
from synthaug.store import SampleStore
from synthaug.toy.world import TOY_VOCABULARY
from synthaug.vocabulary import IGNORE_INDEX

sys.path.insert(0, str(Path(__file__).parent))
import sd_tiny

# The toy layouts' ids 1..3 named by words the tiny CLIP tokenizer knows (its limit is 16 tokens), in the toy palette
VOCAB = {"names": ["background", "cat", "dog", "motorcycle"], "palette": [list(c) for c in TOY_VOCABULARY.palette]}


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> Path:
    """Six toy label PNGs (background, circle, square, triangle; 32 px, so the 64 px images resize them)."""
    from synthaug.toy.dataset import write_toy_dataset

    root = tmp_path_factory.mktemp("layouts")
    write_toy_dataset(root / "toy", {"train": 6, "val": 0, "test": 0}, size=32, seed=3)
    return root / "toy" / "ann_dir" / "train"


@pytest.fixture(scope="module")
def controlnets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("controlnets")
    return {"sd": sd_tiny.make_tiny_controlnet(root / "sd"), "sdxl": sd_tiny.make_tiny_controlnet(root / "xl", True)}


def gen_yaml(path: Path, layouts: Path, label: str = "layout", **extra) -> Path:
    data = {
        "vocabulary": VOCAB,
        "layout": {"masks": str(layouts), "label": label, "scale": 0.8, "template": "{cls}"},
        "steps": 2,
        "guidance": 4.0,
        "height": 64,
        "width": 64,
        "num": 4,
        "batch_size": 2,
        "method": "cross_attention",
        "annotator": {"factors": [2]},
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def stored_layouts(store: SampleStore, layouts: Path) -> list[np.ndarray]:
    """Each stored sample's 32 px layout at 64 px (each pixel doubled), in store order (the prompts cycle through
    the sorted files)."""
    files = sorted(layouts.glob("*.png"))
    twice = [np.repeat(np.repeat(read_mask(files[i % len(files)]), 2, 0), 2, 1) for i in range(len(store))]
    assert all(np.array_equal(t, resize_mask(t[::2, ::2], 64, 64)) for t in twice)  # nearest: 32 px doubled
    return twice


@pytest.mark.parametrize("kind", ["sd", "sdxl"])
def test_layout_label_is_the_resized_layout_and_the_controlnet_sees_its_palette_image(
    kind, controlnets, layouts, tmp_path, monkeypatch
):
    """`synthaug generate` with a ControlNet model and `layout`: each sample's mask is its layout (nearest
    resize), its prompt names exactly the layout's classes, and the ControlNet's input is the layout painted
    in the vocabulary's palette, for the prompt rows and the negative rows alike."""
    cfg = gen_yaml(tmp_path / "gen.yaml", layouts)
    seen: list[torch.Tensor] = []
    model = load_model(controlnets[kind])
    scales: list[float] = []

    def hook(module, args, kwargs):
        seen.append(kwargs["controlnet_cond"].clone())
        scales.append(kwargs["conditioning_scale"])

    model.pipe.controlnet.register_forward_pre_hook(hook, with_kwargs=True)
    import synthaug.generation_job as job

    config = GenerationConfig.load(cfg)
    config.model = str(controlnets[kind])
    monkeypatch.setattr(job, "load_model", lambda *a, **k: model)  # the pipeline above, with its hook
    assert job.run_generation(config, tmp_path / "store", progress=False) == 4
    assert cli(["verify", str(tmp_path / "store")]) == 0
    store = SampleStore(tmp_path / "store")
    expected = stored_layouts(store, layouts)
    names = VOCAB["names"]
    for i, want in enumerate(expected):
        s = store.read(i)
        assert np.array_equal(s.mask, want)
        assert {n for n in names[1:] if n in s.prompt} == {names[c] for c in np.unique(want) if 0 < c < 255}
        assert s.fingerprint["layout_label"] == "layout" and s.fingerprint["annotator"] is None
        assert {names[x.class_id] for x in s.instances} <= {names[c] for c in np.unique(want)}
    # two steps a batch; under guidance the ControlNet sees [negatives; prompts], each with the layout's image
    assert len(seen) == 4 and scales == [0.8] * 4  # layout.scale is the ControlNet's conditioning scale
    for b, cond in enumerate(seen[::2]):
        palette = np.array(VOCAB["palette"] + [[0, 0, 0]] * (256 - len(VOCAB["palette"])), np.uint8)  # ignore: black
        pictures = np.stack([palette[m] for m in expected[2 * b : 2 * b + 2]])
        want = torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 255
        assert torch.allclose(cond.float(), torch.cat([want, want]), atol=1e-6)


def test_agree_keeps_the_layout_only_where_the_annotator_agrees(controlnets, layouts, tmp_path):
    cfg = gen_yaml(tmp_path / "gen.yaml", layouts, label="agree")
    assert cli(["generate", "--config", str(cfg), "--out", str(tmp_path / "s"), "--model", str(controlnets["sd"])]) == 0
    store = SampleStore(tmp_path / "s")
    for s, want in zip((store.read(i) for i in range(len(store))), stored_layouts(store, layouts)):
        kept = s.mask != IGNORE_INDEX
        assert np.array_equal(s.mask[kept], want[kept])  # never a class the layout does not have there
        objects = (want != IGNORE_INDEX) & (want != 0)  # the figure counts object pixels, not background
        assert s.quality["layout_agreement"] == pytest.approx((kept & objects).sum() / objects.sum())
        assert s.fingerprint["annotator"] == "cross_attention"
    # the mix's min_quality drops the samples that did not follow their layout
    from synthaug.mix import SyntheticMixDataset

    agreements = sorted(store.read(i).quality["layout_agreement"] for i in range(len(store)))
    cut = agreements[len(agreements) // 2]
    mix = SyntheticMixDataset(list(range(8)), tmp_path / "s", ratio=0.5, min_quality={"layout_agreement": cut})
    assert mix.pool_size == sum(a >= cut for a in agreements)


def test_annotator_label_keeps_the_attention_label(controlnets, layouts, tmp_path):
    cfg = gen_yaml(tmp_path / "gen.yaml", layouts, label="annotator")
    assert cli(["generate", "--config", str(cfg), "--out", str(tmp_path / "s"), "--model", str(controlnets["sd"])]) == 0
    store = SampleStore(tmp_path / "s")
    s = store.read(0)
    assert "layout_agreement" in s.quality and s.fingerprint["layout_label"] == "annotator"
    prompted = {VOCAB["names"].index(n) for n in VOCAB["names"][1:] if n in s.prompt}
    assert set(np.unique(s.mask).tolist()) <= prompted | {0, 255}


def test_layout_prompts_cycle_the_sorted_layouts_and_pass_over_those_without_objects(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    for name, ids in (("b.png", [0, 2]), ("a.png", [1, 3, 255]), ("c.png", [0, 0])):
        Image.fromarray(np.array([ids], np.uint8), mode="L").save(masks / name)
    specs = layout_prompts(LayoutSettings(masks), TOY_VOCABULARY, 5, seed=0)
    assert [s.text for s in specs] == [
        "a photo of a circle and a triangle",
        "a photo of a square",
        "a photo of a circle and a triangle",
        "a photo of a square",
        "a photo of a circle and a triangle",
    ]
    assert [Path(s.meta["layout"]).name for s in specs] == ["a.png", "b.png", "a.png", "b.png", "a.png"]
    assert len({s.seed for s in specs}) == 5  # a layout used again is a new image
    assert [t.class_id for t in specs[0].targets] == [1, 3]
    later = layout_prompts(LayoutSettings(masks), TOY_VOCABULARY, 2, seed=4)  # a producer's later batch: moved on
    assert [Path(s.meta["layout"]).name for s in later] == ["b.png", "a.png"]


# ------------------------------------------------------------------------------------------------ bad input


def test_a_layout_with_a_class_id_the_vocabulary_lacks_is_named(tmp_path):
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.fromarray(np.array([[0, 7]], np.uint8), mode="L").save(masks / "bad.png")
    with pytest.raises(ValueError, match=r"bad.png has class ids \[7\]"):
        layout_prompts(LayoutSettings(masks), TOY_VOCABULARY, 1)


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"masks": "nowhere"}, "'layout.masks' 'nowhere' is not a folder"),
        ({"masks": "MASKS", "label": "best"}, "'layout.label' must be one of"),
        ({"masks": "MASKS", "scale": -1}, "'layout.scale' must be a number >= 0"),
        ({"masks": "MASKS", "template": "a photo"}, "'layout.template' must hold '{cls}'"),
        ({"masks": "MASKS", "colours": 1}, "key 'layout' must be a mapping with 'masks'"),
        ("MASKS", "key 'layout' must be a mapping with 'masks'"),
    ],
)
def test_bad_layout_keys_are_named(layouts, layout, message):
    if isinstance(layout, dict):
        layout = {k: str(layouts) if v == "MASKS" else v for k, v in layout.items()}
    else:
        layout = str(layouts)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        GenerationConfig.from_dict({"vocabulary": VOCAB, "layout": layout})


def test_layout_and_prompts_together_are_refused(layouts):
    with pytest.raises(ConfigError, match="'layout' and 'prompts' are both set"):
        GenerationConfig.from_dict(
            {"vocabulary": VOCAB, "layout": {"masks": str(layouts)}, "prompts": {"source": "toy"}}
        )


def test_a_controlnet_without_layouts_and_layouts_without_a_controlnet_fail_before_any_store(
    controlnets, layouts, tmp_path, capsys
):
    plain = gen_yaml(tmp_path / "plain.yaml", layouts)
    data = yaml.safe_load(plain.read_text())
    del data["layout"]
    data["prompts"] = {"source": "templates", "templates": ["a photo of a {cls}"]}
    plain.write_text(yaml.safe_dump(data))
    assert (
        cli(["generate", "--config", str(plain), "--out", str(tmp_path / "a"), "--model", str(controlnets["sd"])]) == 2
    )
    assert "is a ControlNet pipeline" in capsys.readouterr().err and not (tmp_path / "a").exists()
    with_layout = gen_yaml(tmp_path / "layout.yaml", layouts)
    sd = sd_tiny.make_tiny_sd(tmp_path / "sd")
    assert cli(["generate", "--config", str(with_layout), "--out", str(tmp_path / "b"), "--model", str(sd)]) == 2
    err = capsys.readouterr().err
    assert "'layout' needs a ControlNet pipeline" in err and "StableDiffusionPipeline" in err
    assert not (tmp_path / "b").exists()


def test_layout_annotation_rules_on_a_known_disagreement():
    """`agree` keeps the layout exactly where the annotator finds the same class; its figure counts object
    pixels only (a layout mostly background that the annotator misses gets a low figure); `annotator` keeps the
    annotator's label; `layout` the layout."""
    from synthaug.annotators.base import Annotation
    from synthaug.layout import layout_annotation

    layout = np.zeros((4, 10), np.uint8)
    layout[:, 8:] = 1  # a cat in 8 of 40 pixels, 255 in one
    layout[0, 0] = 255
    found_mask = np.zeros((4, 10), np.uint8)
    found_mask[:2, 8:] = 1  # the annotator finds half the cat
    found_mask[3, 0] = 2  # and a dog where the layout has background
    found = Annotation(found_mask, np.where(found_mask == 1, 0, -1), np.full((4, 10), 0.5, np.float32))
    ann, fig = layout_annotation(layout, [1], "agree", found, background_id=0)
    want = np.where(found_mask == layout, layout, 255)
    want[0, 0] = 255
    assert np.array_equal(ann.mask, want) and fig["layout_agreement"] == pytest.approx(4 / 8)
    assert np.array_equal(ann.winner, np.where(want == 1, 0, -1))
    ann, fig = layout_annotation(layout, [1], "annotator", found, background_id=0)
    assert ann is found and fig["layout_agreement"] == pytest.approx(4 / 8)
    ann, fig = layout_annotation(layout, [1], "layout", None, background_id=0)
    assert np.array_equal(ann.mask, layout) and fig == {}


def test_ignore_pixels_non_square_images_and_reduce_zero_label(controlnets, tmp_path, monkeypatch):
    """ADE20K-style layouts (0 = other, class k stored as k + 1) with ignore pixels, 16 x 24 px, generated at
    64 x 96: each pixel becomes a 4 x 4 block, ignore stays ignore and is black in the control image."""
    masks = tmp_path / "ade"
    masks.mkdir()
    rng = np.random.default_rng(0)
    raw = []
    for k in range(3):
        m = rng.integers(0, 5, (16, 24)).astype(np.uint8)  # 0 = other, 1..3 = background, cat, dog; 4 = motorcycle
        m[:2] = 255
        raw.append(m)
        Image.fromarray(m, mode="L").save(masks / f"{k}.png")
    cfg = gen_yaml(tmp_path / "gen.yaml", masks, height=64, width=96, num=3, batch_size=3)
    data = yaml.safe_load(cfg.read_text())
    data["layout"]["reduce_zero_label"] = True
    cfg.write_text(yaml.safe_dump(data))
    seen = []
    model = load_model(controlnets["sd"])
    model.pipe.controlnet.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["controlnet_cond"].clone()), with_kwargs=True
    )
    import synthaug.generation_job as job

    monkeypatch.setattr(job, "load_model", lambda *a, **k: model)
    config = GenerationConfig.load(cfg)
    config.model = str(controlnets["sd"])
    assert job.run_generation(config, tmp_path / "store", progress=False) == 3
    store = SampleStore(tmp_path / "store")
    for i, m in enumerate(raw):
        reduced = np.where((m == 0) | (m == 255), 255, m.astype(np.int64) - 1).astype(np.uint8)
        want = np.repeat(np.repeat(reduced, 4, 0), 4, 1)
        assert np.array_equal(store.read(i).mask, want)
        cond = seen[0][3 + i].permute(1, 2, 0).numpy()  # the prompt rows follow the 3 negative rows
        assert np.all(cond[want == 255] == 0)
        assert np.allclose(cond[want == 2], np.array(VOCAB["palette"][2]) / 255, atol=1e-6)


def test_the_producer_walks_through_the_layouts(controlnets, layouts, tmp_path):
    """`synthaug produce` takes the layouts in turn batch after batch, not the first batch's again."""
    from synthaug.producer import Producer

    cfg = GenerationConfig.load(gen_yaml(tmp_path / "gen.yaml", layouts, batch_size=2))
    cfg.model = str(controlnets["sd"])
    Producer(cfg, tmp_path / "store", max_samples=6, segment="p").run()
    store = SampleStore(tmp_path / "store")
    assert len(store) == 6
    files = sorted(layouts.glob("*.png"))
    prompts = [store.read(i).prompt for i in range(6)]
    wanted = []
    for f in files:
        ids = np.unique(read_mask(f))
        wanted.append(" and a ".join(VOCAB["names"][c] for c in ids if 0 < c < 255))
    assert prompts == wanted  # six batches of two would repeat the first two layouts if each batch started over


def test_template_fields_and_palette_clashes_are_named(layouts):
    for template in ("a {cls} in {place}", "a {cls} {}", "{{cls}}", "a {cls"):
        with pytest.raises(ConfigError, match=r"'layout\.template' must hold"):
            GenerationConfig.from_dict({"vocabulary": VOCAB, "layout": {"masks": str(layouts), "template": template}})
    clash = {"names": VOCAB["names"], "palette": [[0, 0, 0], [5, 5, 5], [5, 5, 5], [9, 9, 9]]}
    with pytest.raises(ConfigError, match=r"gives 'cat' and 'dog' the same colour \[5, 5, 5\]"):
        GenerationConfig.from_dict({"vocabulary": clash, "layout": {"masks": str(layouts)}})


def test_a_layout_whose_prompt_is_too_long_is_named_before_any_store(controlnets, tmp_path, capsys):
    masks = tmp_path / "busy"
    masks.mkdir()
    Image.fromarray(np.array([[0, 1, 2, 3]], np.uint8), mode="L").save(masks / "busy.png")
    cfg = gen_yaml(tmp_path / "gen.yaml", masks, num=1)
    data = yaml.safe_load(cfg.read_text())
    data["layout"]["template"] = "a photo of a {cls} in the room in the room"
    cfg.write_text(yaml.safe_dump(data))
    out = tmp_path / "store"
    assert cli(["generate", "--config", str(cfg), "--out", str(out), "--model", str(controlnets["sd"])]) == 2
    err = capsys.readouterr().err
    assert "busy.png" in err and "shorter layout.template" in err and not out.exists()


def test_a_colour_layout_is_named_and_nothing_is_made(tmp_path):
    """A layout saved as an RGB picture, not a label PNG of class ids: the file is named at the first read."""
    masks = tmp_path / "rgb"
    masks.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(masks / "painted.png")
    with pytest.raises(ValueError, match=r"painted\.png"):
        layout_prompts(LayoutSettings(masks), TOY_VOCABULARY, 1)

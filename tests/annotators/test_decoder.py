"""The learned decoder annotator (DatasetDM): feature capture, training, saving, loading, and its checks.

Everything runs the real shipped toy model, real diffusers attention processors and real
training; the decoder is trained once per module through the real `synthaug train-annotator`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from synthaug.annotators import build_annotator, prepare_annotator
from synthaug.annotators.decoder_file import load_decoder
from synthaug.annotators.decoder_net import predict
from synthaug.annotators.decoder_training import (
    extract_features,
    miou,
    predict_semantic,
    read_labelled_folder,
)
from synthaug.annotators.pipeline import AnnotationPipeline
from synthaug.attention import CaptureSpec
from synthaug.cli import main
from synthaug.features import capture_real, real_prompt
from synthaug.generator import generate_batch, generate_samples
from synthaug.toy.dataset import write_toy_dataset
from synthaug.toy.evaluate import toy_prompts
from synthaug.toy.world import TOY_VOCABULARY

#: The module's decoder: 16 labelled renders (12 train, 4 held out), 150 iterations, width 32,
#: about 4 s of training. Measured 2026-11-23: held-out mIoU 0.534, and 0.633 on 8 images it
#: never saw, where chance scores 0.203 (every pixel background) and 0.189 (a uniform guess
#: among each image's classes). Floors sit 0.13 below the measured figures, still 0.30 above chance.
MEASURED_HELDOUT, FLOOR_HELDOUT = 0.534, 0.40
MEASURED_UNSEEN, FLOOR_UNSEEN = 0.633, 0.50
TRAIN_ARGS = ["--iterations", "150", "--width", "32", "--val-fraction", "0.25", "--limit", "16"]


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    write_toy_dataset(root, {"train": 16, "val": 8}, seed=3)
    return root


@pytest.fixture(scope="module")
def trained(toy_data, tmp_path_factory, toy_model):
    """A decoder trained by the real CLI on 16 labelled toy renders."""
    out = tmp_path_factory.mktemp("decoder") / "decoder.safetensors"
    args = ["train-annotator", "--images", str(toy_data / "img_dir/train"), "--masks", str(toy_data / "ann_dir/train")]
    args += ["--instances", str(toy_data / "inst_dir/train"), "--out", str(out), *TRAIN_ARGS]
    torch.manual_seed(0)
    assert main(args) == 0
    return out


def test_feature_capture_at_one_timestep_leaves_images_unchanged(toy_model):
    spec = CaptureSpec(cross_factors=(2, 4), features=(1, 2, 4), timestep=50)
    prompts = ["a red circle and a blue square on stripes", "a green triangle on plain"]
    plain = generate_batch(toy_model, prompts, [1, 2], steps=10)
    out = generate_batch(toy_model, prompts, [1, 2], steps=10, capture=spec)
    assert np.array_equal(plain.images, out.images)
    feats = out.captured.feature_maps()
    assert {f: tuple(t.shape) for f, t in feats.items()} == {1: (2, 32, 32, 32), 2: (2, 64, 16, 16), 4: (2, 64, 8, 8)}
    # Features and the pass's attention come from one extra pass at t=50: their sums count each layer once;
    # the attention over the sampling steps is the same as a capture without a timestep.
    full = generate_batch(toy_model, prompts, [1, 2], steps=10, capture=CaptureSpec(cross_factors=(2, 4)))
    assert {f: 10 * c for f, c in out.captured.step_cross_count.items()} == full.captured.cross_count
    assert out.captured.cross_count == full.captured.cross_count
    assert all(torch.equal(out.captured.cross_sum[f], full.captured.cross_sum[f]) for f in (2, 4))
    assert out.captured.feature_count == {1: 1, 2: 1, 4: 1}


def test_generated_images_are_read_at_the_timestep_the_decoder_was_trained_at(toy_model):
    """Features of a generated image equal those the training path (capture_real) takes of the same image at
    t=50, up to the image's rounding to uint8; the sampler's step nearest 50 (t=39 with 25 Euler ancestral
    steps), which generation used to read, is far off."""
    spec = CaptureSpec(cross_factors=(2,), features=(1, 2, 4), timestep=50)
    prompts = ["a red circle and a blue square on stripes", "a green triangle on plain"]
    out = generate_batch(toy_model, prompts, [1, 2], steps=25, capture=spec)
    assert 50 not in [int(t) for t in toy_model.scheduler.timesteps]
    generated = out.captured.feature_maps()
    at_50 = capture_real(toy_model, out.images, prompts, spec, [1, 2]).feature_maps()
    at_39 = capture_real(toy_model, out.images, prompts, replace(spec, timestep=39), [1, 2]).feature_maps()
    for f in (1, 2, 4):
        same = float((generated[f] - at_50[f]).norm() / at_50[f].norm())
        other = float((generated[f] - at_39[f]).norm() / at_50[f].norm())
        assert same < 0.25 * other, (f, same, other)  # measured: 0.011 vs 0.170 at factor 1, 0.001 vs 0.035 at 4


def test_real_image_capture_is_deterministic_per_seed(toy_model, toy_data):
    data = read_labelled_folder(toy_data / "img_dir/val", toy_data / "ann_dir/val", 32, limit=2)
    spec = CaptureSpec(cross_factors=(2,), features=(1, 2, 4), timestep=50)
    prompts = [real_prompt(TOY_VOCABULARY, np.unique(m).tolist()).text for m in data.masks]
    assert all(p.startswith("a ") for p in prompts)
    a = capture_real(toy_model, data.images, prompts, spec, [0, 1]).feature_maps()
    b = capture_real(toy_model, data.images, prompts, spec, [0, 1]).feature_maps()
    c = capture_real(toy_model, data.images, prompts, spec, [5, 6]).feature_maps()
    assert all(torch.equal(a[f], b[f]) for f in a)
    assert not torch.equal(a[1], c[1])


@pytest.mark.slow
def test_training_beats_chance_on_held_out_images(trained, toy_model, toy_data):
    record = load_decoder(trained).record
    assert record["train_images"] == 12 and record["heldout_images"] == 4
    print("held-out mIoU", record["heldout_miou"], "in", record["seconds"], "s")
    assert record["heldout_miou"] >= FLOOR_HELDOUT, (record["heldout_miou"], MEASURED_HELDOUT)
    # The same figure again, from the loaded file, on the 8 images it never saw.
    ann = build_annotator("decoder", {"path": str(trained)})
    val = read_labelled_folder(toy_data / "img_dir/val", toy_data / "ann_dir/val", 32)
    fs = extract_features(toy_model, val, ann.cfg, TOY_VOCABULARY, progress=False)
    truth = fs.masks.numpy()
    score = miou(predict_semantic(ann.net, fs), truth, 4)
    all_background = miou(np.zeros_like(truth), truth, 4)
    rng = np.random.default_rng(0)
    allowed = fs.allowed.numpy()
    guess = np.stack([rng.choice(np.flatnonzero(a), size=t.shape) for a, t in zip(allowed, truth)])
    uniform = miou(guess, truth, 4)
    print("unseen mIoU", score, "all-background", all_background, "uniform guess", uniform)
    assert score >= FLOOR_UNSEEN and score >= max(all_background, uniform) + 0.25, (score, MEASURED_UNSEEN)


@pytest.mark.slow
def test_saved_annotator_reloads_and_gives_identical_masks(trained, toy_model):
    specs = [p.to_spec() for p in toy_prompts(4, seed=77)]

    def masks(annotator):
        pipeline = AnnotationPipeline(annotator, TOY_VOCABULARY)
        samples = list(generate_samples(toy_model, specs, pipeline, batch_size=4, steps=8))
        return [s.mask for s in samples], [len(s.instances) for s in samples]

    first = build_annotator("decoder", {"path": str(trained)})
    prepare_annotator(first, TOY_VOCABULARY, toy_model)
    second = build_annotator("decoder", {"path": str(trained)})
    m1, n1 = masks(first)
    m2, n2 = masks(second)
    assert all(np.array_equal(a, b) for a, b in zip(m1, m2)) and n1 == n2
    assert sum(int((m != 0).any()) for m in m1) >= 3  # it labels objects, not all background


def test_the_saved_file_holds_the_trained_weights(toy_model, toy_data, tmp_path):
    """What `build_annotator` loads is the network train_decoder trained (its best), not a fresh initialisation."""
    from synthaug.annotators.decoder_training import TrainOptions, train_decoder

    data = read_labelled_folder(toy_data / "img_dir/train", toy_data / "ann_dir/train", 32, limit=6)
    options = TrainOptions(width=16, iterations=12, batch_size=4, draws=1, val_fraction=0.0, eval_every=6)
    torch.manual_seed(0)
    result = train_decoder(toy_model, data, TOY_VOCABULARY, options, out=tmp_path / "d.safetensors", progress=False)
    loaded = build_annotator("decoder", {"path": str(result.path)}).net.state_dict()
    trained_state = result.net.state_dict()
    assert set(loaded) == set(trained_state)
    assert all(torch.equal(loaded[k], trained_state[k].cpu()) for k in trained_state)
    fresh = load_decoder(result.path).cfg
    torch.manual_seed(0)
    from synthaug.annotators.decoder_net import PerceptionDecoder

    untrained = PerceptionDecoder(fresh).state_dict()
    assert any(not torch.equal(loaded[k], untrained[k]) for k in untrained if loaded[k].is_floating_point())


@pytest.mark.slow
def test_generate_with_the_decoder_writes_instances(trained, tmp_path):
    import yaml

    from synthaug.store import SampleStore

    # The shipped example config, pointed at this module's decoder.
    data = yaml.safe_load((Path(__file__).parents[2] / "configs/generate/toy_decoder.yaml").read_text())
    data["annotator"]["path"] = str(trained)
    data.update(steps=8, num=4)
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(yaml.safe_dump(data))
    assert main(["generate", "--config", str(cfg), "--out", str(tmp_path / "store")]) == 0
    store = SampleStore(tmp_path / "store")
    assert len(store) == 4
    samples = [store.read(i) for i in range(4)]
    assert sum(len(s.instances) for s in samples) >= 4
    assert all(s.fingerprint["annotator"] == "decoder" for s in samples)


@pytest.mark.slow
def test_another_model_or_vocabulary_fails_with_a_clear_message(trained, toy_model, tmp_path, capsys):
    from diffusers import UNet2DConditionModel

    from synthaug.generator import load_model
    from synthaug.vocabulary import ClassVocabulary

    ann = build_annotator("decoder", {"path": str(trained)})
    other = ClassVocabulary(("background", "cat", "dog"), ((0, 0, 0), (1, 1, 1), (2, 2, 2)))
    with pytest.raises(ValueError, match="class vocabularies differ") as err:
        prepare_annotator(ann, other, toy_model)
    assert "'circle'" in str(err.value) and "'cat'" in str(err.value)

    # Same architecture, other weights: a retrained or fine-tuned checkpoint.
    import shutil

    folder = tmp_path / "other_model"
    shutil.copytree(toy_model.path, folder)
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    with torch.no_grad():
        unet.conv_in.weight.add_(0.05)
    unet.save_pretrained(folder / "unet")
    with pytest.raises(ValueError, match="other weights") as err:
        prepare_annotator(ann, TOY_VOCABULARY, load_model(folder))
    assert "synthaug train-annotator" in str(err.value)

    # Through the CLI, a vocabulary mismatch stops `generate` before any model loads.
    import yaml

    cfg = tmp_path / "gen.yaml"
    vocab = {"names": list(other.names), "palette": [list(c) for c in other.palette]}
    cfg.write_text(
        yaml.safe_dump(
            {
                "method": "decoder",
                "annotator": {"path": str(trained)},
                "vocabulary": vocab,
                "prompts": {"source": "templates"},
            }
        )
    )
    assert main(["generate", "--config", str(cfg), "--out", str(tmp_path / "s")]) == 2
    assert "class vocabularies differ" in capsys.readouterr().err


def test_bad_annotator_files_and_params_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match=r"annotator\.path is missing"):
        build_annotator("decoder", {})
    with pytest.raises(FileNotFoundError, match="synthaug train-annotator"):
        build_annotator("decoder", {"path": str(tmp_path / "none.safetensors")})
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        build_annotator("decoder", {"path": str(junk)})
    with pytest.raises(ValueError, match=r"annotator\.classes"):
        build_annotator("decoder", {"path": str(junk), "classes": "votes"})


def test_predict_restricts_to_the_prompted_classes(trained):
    ann = build_annotator("decoder", {"path": str(trained)})
    cfg = ann.cfg
    feats = [torch.randn(1, c, 32 // f, 32 // f) for f, c in zip(cfg.feature_factors, cfg.feature_channels)]
    allowed = torch.tensor([[True, False, True, False]])
    probs = predict(ann.net, feats, torch.zeros(1, 4, 32, 32), allowed)["probs"]
    assert probs[:, [1, 3]].max() < 1e-6
    assert torch.allclose(probs.sum(1), torch.ones(1, 32, 32), atol=1e-5)

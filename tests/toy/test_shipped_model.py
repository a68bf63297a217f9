"""The shipped toy model: loads offline from the package, generates on the CPU, clears measured floors."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from synthaug.annotators import build_annotator
from synthaug.generator import generate_batch
from synthaug.toy.evaluate import Variant, evaluate_toy_model, toy_prompts
from synthaug.toy.model import SHIPPED_MODEL_DIR

# Measured 2026-11-23 on these 32 prompts (seed 500), the shipped sampler (Euler ancestral, 25 steps),
# guidance 3, 2 CPU threads.
# Floors sit 0.10 below each measurement; the assert messages print the measurement to compare.
MEASURED = {"fidelity": 0.952, "colour_fidelity": 0.952, "cross": 0.860, "self_refined": 0.866, "cross+edge": 0.987}
FLOORS = {"fidelity": 0.85, "colour_fidelity": 0.85, "cross": 0.76, "self_refined": 0.77, "cross+edge": 0.89}


def test_files_are_local_small_and_described():
    files = [p for p in SHIPPED_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    names = {p.relative_to(SHIPPED_MODEL_DIR).as_posix() for p in files}
    assert {
        "model_index.json",
        "unet/diffusion_pytorch_model.safetensors",
        "text_encoder/model.safetensors",
        "tokenizer/tokenizer.json",
        "scheduler/scheduler_config.json",
        "README.md",
    } <= names
    card = json.loads((SHIPPED_MODEL_DIR / "synthaug_model.json").read_text())
    assert card["training"]["final"] is True and card["text_mask_policy"] == "bos_and_words"


def test_generates_8_images_on_the_cpu(toy_model):
    prompts = [p.caption for p in toy_prompts(8, seed=3)]
    t0 = time.perf_counter()
    out = generate_batch(toy_model, prompts, list(range(8)), steps=10, guidance=3.0)
    print(f"8 images, 10 steps: {time.perf_counter() - t0:.1f} s")
    assert out.images.shape == (8, 32, 32, 3) and out.images.dtype == np.uint8
    assert len({im.tobytes() for im in out.images}) == 8
    again = generate_batch(toy_model, prompts[:2], [0, 1], steps=10, guidance=3.0)
    # Seeded: the same seed gives the same image in a batch of 2 as in one of 8, though the shipped
    # sampler (Euler ancestral) adds noise at every step; it draws it from each image's generator.
    assert type(toy_model.scheduler).__name__ == "EulerAncestralDiscreteScheduler"
    assert (again.images == out.images[:2]).all()


@pytest.fixture(scope="module")
def evaluation(toy_model):
    variants = {
        "cross": Variant(build_annotator("cross_attention", {"factors": [2]})),
        "self_refined": Variant(build_annotator("self_refined", {"cross_factors": [2], "self_factor": 2})),
        "cross+edge": Variant(build_annotator("cross_attention", {"factors": [2]}), refine="edge"),
    }
    return evaluate_toy_model(toy_model, toy_prompts(32, seed=500), steps=25, guidance=3.0, variants=variants)


@pytest.mark.slow
def test_fidelity_clears_its_floor(evaluation):
    print({"fidelity": evaluation.fidelity, "colour_fidelity": evaluation.colour_fidelity})
    assert evaluation.fidelity >= FLOORS["fidelity"], (evaluation.fidelity, MEASURED["fidelity"])
    assert evaluation.colour_fidelity >= FLOORS["colour_fidelity"], evaluation.colour_fidelity
    assert evaluation.objects == sum(len(p.objects) for p in toy_prompts(32, seed=500))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cross", "self_refined", "cross+edge"])
def test_annotator_miou_clears_its_floor(evaluation, name):
    print(name, evaluation.miou[name], evaluation.per_class_iou[name])
    assert evaluation.miou[name] >= FLOORS[name], (evaluation.miou[name], MEASURED[name])


@pytest.mark.slow
def test_instances_match_the_objects_named(toy_model):
    """Prompts whose objects have distinct shapes: one instance per named object, of its class.

    Measured 2026-11-23 on these 32 prompts (seed 700), cross f2 + edge, min area 1%: the count
    matches in 0.844 of images and the classes match in 0.844; floors 0.10 below.
    """
    from synthaug.annotators.pipeline import AnnotationPipeline
    from synthaug.generator import generate_samples
    from synthaug.toy.world import TOY_VOCABULARY

    prompts = [p for p in toy_prompts(80, seed=700) if len({o.shape for o in p.objects}) == len(p.objects)][:32]
    cross = build_annotator("cross_attention", {"factors": [2]})
    samples = list(
        generate_samples(
            toy_model,
            [p.to_spec() for p in prompts],
            AnnotationPipeline(cross, TOY_VOCABULARY, "edge", min_instance_area=0.01),
            batch_size=16,
            steps=25,
            guidance=3.0,
        )
    )
    count = sum(len(s.instances) == len(p.objects) for s, p in zip(samples, prompts)) / len(prompts)
    named = [sorted(TOY_VOCABULARY.id_of(o.shape) for o in p.objects) for p in prompts]
    classes = sum(sorted(i.class_id for i in s.instances) == n for s, n in zip(samples, named)) / len(prompts)
    print({"count_match": count, "class_match": classes})
    assert count >= 0.74 and classes >= 0.74, (count, classes)

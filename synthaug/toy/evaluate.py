"""Judge a text-to-image model on the toy world: fidelity, and cross-attention mask mIoU against colour truth."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from synthaug.annotators import prepare_annotator
from synthaug.annotators.base import Annotator
from synthaug.annotators.cross_attention import CrossAttentionAnnotator, CrossAttentionParams
from synthaug.annotators.pipeline import AnnotationPipeline
from synthaug.attention import CaptureSpec
from synthaug.generator import DiffusionModel, generate_batch
from synthaug.metrics import IoUAccumulator
from synthaug.prompts import ObjectTarget, PromptSpec, token_positions, words_positions
from synthaug.toy.score import (
    ObjectCheck,
    PromptedObject,
    check_objects,
    drawn_instances,
    semantic_truth,
)
from synthaug.toy.world import SHAPES, TOY_VOCABULARY, sample_scene

#: Which words of an object feed its attention map.
WORD_CHOICES = ("shape", "colour", "both")


@dataclass(frozen=True)
class ToyPrompt:
    caption: str
    objects: tuple[PromptedObject, ...]
    seed: int

    def to_spec(self) -> PromptSpec:
        """As a generic PromptSpec: class = shape, named by the "colour shape" phrase (colours are unique)."""
        targets = tuple(ObjectTarget(TOY_VOCABULARY.id_of(o.shape), (f"{o.colour} {o.shape}",)) for o in self.objects)
        return PromptSpec(self.caption, targets, self.seed)


def toy_prompts(n: int, seed: int = 1000, max_objects: int = 3) -> list[ToyPrompt]:
    """`n` captions of random toy scenes (as the model was trained on), each with its generation seed."""
    out = []
    for i in range(n):
        scene = sample_scene(seed + i, max_objects=max_objects)
        objs = tuple(PromptedObject(o.colour, o.shape) for o in scene.objects)
        out.append(ToyPrompt(scene.caption, objs, seed + i))
    return out


def token_groups_for(
    tokenizer, caption: str, objects: Sequence[PromptedObject], words: str = "both"
) -> list[list[int]]:
    """For each prompted object, the token positions of its shape word, colour word, or both."""
    if words not in WORD_CHOICES:
        raise ValueError(f"words={words!r}: use one of {WORD_CHOICES}")
    groups = []
    for o in objects:
        # Colours are distinct within a toy prompt, so "red circle" names one object even if shapes repeat.
        phrase = words_positions(tokenizer, caption, [f"{o.colour} {o.shape}"])
        colour = [p for p in token_positions(tokenizer, caption, o.colour) if p in phrase]
        shape = [p for p in phrase if p not in colour]
        groups.append({"shape": shape, "colour": colour, "both": phrase}[words])
    return groups


@dataclass
class ToyEvaluation:
    """Scores of one model over a set of prompts, and the generated images for a look."""

    fidelity: float
    colour_fidelity: float
    miou: dict[str, float]
    #: mIoU with the pixels a variant left ignore counted as wrong, and the share it left ignore.
    miou_ignore_wrong: dict[str, float]
    ignore_share: dict[str, float]
    per_class_iou: dict[str, list[float]]
    seconds_per_image: float
    annotate_seconds_per_image: dict[str, float] = field(default_factory=dict)
    #: mIoU over the faithful images only (every object in the right colour and shape), where the
    #: prompt's class and what was drawn agree, so a label by appearance and one by prompt coincide.
    miou_faithful: dict[str, float] = field(default_factory=dict)
    faithful_images: int = 0
    #: Prompted objects checked, the count behind `fidelity` (for pooling sets and standard errors).
    objects: int = 0
    #: Share of images whose instance count (min area 1%) equals the true one: the components of
    #: at least 1% of the image in the prompted objects' colour masks (what was actually drawn).
    instance_count_match: dict[str, float] = field(default_factory=dict)
    #: Fidelity (colour and shape) per prompted shape, and what the colour-correct objects of each
    #: prompted shape were drawn as: {prompted: {seen: count}}.
    fidelity_by_shape: dict[str, float] = field(default_factory=dict)
    shape_confusion: dict[str, dict[str, int]] = field(default_factory=dict)
    images: list[np.ndarray] = field(repr=False, default_factory=list)
    masks: dict[str, list[np.ndarray]] = field(repr=False, default_factory=dict)

    def row(self, name: str) -> dict[str, Any]:
        """Annotator `name`'s scores as benchmark artefacts record them: mIoU (ignore left out and counted
        wrong), the ignore share, per-class IoU and the annotation cost per image."""
        return {
            "miou": round(self.miou[name], 3),
            "miou_ignore_wrong": round(self.miou_ignore_wrong[name], 3),
            "ignore_share": round(self.ignore_share[name], 4),
            "per_class": dict(zip(TOY_VOCABULARY.names, self.per_class_iou[name])),
            "annotate_ms_per_image": round(1000 * self.annotate_seconds_per_image[name], 2),
        }


def shape_breakdown(checks: Sequence[ObjectCheck]) -> tuple[dict[str, float], dict[str, dict[str, int]]]:
    """Fidelity per prompted shape, and the shapes its colour-correct objects were seen as."""
    fidelity, confusion = {}, {}
    for shape in SHAPES:
        mine = [c for c in checks if c.obj.shape == shape]
        if not mine:
            continue
        fidelity[shape] = float(np.mean([c.ok for c in mine]))
        seen = [c.shape_seen for c in mine if c.colour_ok]
        confusion[shape] = {s: seen.count(s) for s in SHAPES if seen.count(s)}
    return fidelity, confusion


@dataclass(frozen=True)
class Variant:
    """One way to annotate: an annotator, which words of each object it reads, and a refinement."""

    annotator: Annotator
    words: str = "both"
    refine: str = "none"
    refine_params: tuple[tuple[str, Any], ...] = ()

    def pipeline(self) -> AnnotationPipeline:
        """The annotation pipeline of this variant on the toy vocabulary (instances of at least 1% of the image)."""
        return AnnotationPipeline(self.annotator, TOY_VOCABULARY, self.refine, dict(self.refine_params), 0.01)


def cross_variant(factors: tuple[int, ...], words: str = "both", threshold: float | str = 0.5) -> Variant:
    return Variant(CrossAttentionAnnotator(CrossAttentionParams(factors=factors, threshold=threshold)), words)


def union_capture(variants: Sequence[Variant]) -> CaptureSpec:
    """One capture that serves every variant's annotator; at most one of them may name a timestep."""
    specs = [v.annotator.capture for v in variants]
    timesteps = {s.timestep for s in specs} - {None}
    if len(timesteps) > 1:
        raise ValueError(
            f"variants capture at timesteps {sorted(timesteps)}: one capture serves one; use capture_groups"
        )
    return CaptureSpec(
        cross_factors=tuple(sorted({f for s in specs for f in s.cross_factors})),
        self_factors=tuple(sorted({f for s in specs for f in s.self_factors})),
        step_range=(min(s.step_range[0] for s in specs), max(s.step_range[1] for s in specs)),
        features=tuple(sorted({f for s in specs for f in s.features})),
        timestep=next(iter(timesteps), None),
    )


def capture_groups(variants: dict[str, Variant]) -> list[tuple[CaptureSpec, list[str]]]:
    """Variants grouped so that each group needs at most one timestep, with each group's capture."""
    by_step: dict[int | None, list[str]] = {}
    for name, v in variants.items():
        by_step.setdefault(v.annotator.capture.timestep, []).append(name)
    untimed = by_step.pop(None, [])
    groups = [names for names in by_step.values()] or [[]]
    groups[0] = untimed + groups[0]
    return [(union_capture([variants[n] for n in names]), names) for names in groups]


@dataclass
class _Tally:
    """What one variant's masks scored, accumulated image by image."""

    all: IoUAccumulator = field(default_factory=lambda: IoUAccumulator(len(TOY_VOCABULARY)))
    faithful: IoUAccumulator = field(default_factory=lambda: IoUAccumulator(len(TOY_VOCABULARY)))
    count_match: int = 0
    seconds: float = 0.0
    masks: list[np.ndarray] = field(default_factory=list)


def _generate_once(model, chunk, steps, guidance, groups_of_variants) -> tuple[list, float]:
    """One batch generated once per capture group (same seeds, same images); the first capture's time."""
    outs, seconds = [], 0.0
    for g, (capture, names) in enumerate(groups_of_variants):
        t0 = time.perf_counter()
        out = generate_batch(
            model, [p.caption for p in chunk], [p.seed for p in chunk], steps=steps, guidance=guidance, capture=capture
        )
        if g == 0:
            seconds = time.perf_counter() - t0
        elif not np.array_equal(out.images, outs[0][0].images):
            raise RuntimeError("a second capture of the same seeds gave other images; scores would not compare")
        outs.append((out, names))
    return outs, seconds


def evaluate_toy_model(
    model: DiffusionModel,
    prompts: Sequence[ToyPrompt],
    steps: int = 25,
    guidance: float = 3.0,
    batch_size: int = 16,
    variants: dict[str, Variant] | None = None,
) -> ToyEvaluation:
    """Generate every prompt, check fidelity, and score the masks of each variant against colour truth.

    All variants are scored on the same generated images; by default the shipped recipe,
    cross-attention of both words at factor 2 (the 16x16 maps). `miou` leaves the pixels a variant
    marks ignore (255) out; `miou_ignore_wrong` counts them as wrong, and `ignore_share` says how many.
    Variants that read different single timesteps (learned decoders) get their own capture of
    the same seeds, which yields the same images (capture never changes the output).
    """
    variants = variants or {"cross(f2, both)": cross_variant((2,))}
    for v in variants.values():
        prepare_annotator(v.annotator, model=model)
    pipelines = {name: v.pipeline() for name, v in variants.items()}
    groups_of_variants = capture_groups(variants)
    tallies = {name: _Tally() for name in variants}
    checks, images, faithful, gen_seconds = [], [], 0, 0.0
    for b in range(0, len(prompts), batch_size):
        chunk = prompts[b : b + batch_size]
        outs, seconds = _generate_once(model, chunk, steps, guidance, groups_of_variants)
        gen_seconds += seconds
        for i, p in enumerate(chunk):
            image = outs[0][0].images[i]
            images.append(image)
            image_checks = check_objects(image, p.objects)
            checks.extend(image_checks)
            is_faithful = all(c.ok for c in image_checks)
            faithful += is_faithful
            truth, true_count = semantic_truth(image, p.objects), drawn_instances(image, p.objects, 0.01)
            class_ids = [TOY_VOCABULARY.id_of(o.shape) for o in p.objects]
            for out, names in outs:
                for name in names:
                    t, t1 = tallies[name], time.perf_counter()
                    groups = token_groups_for(model.tokenizer, p.caption, p.objects, variants[name].words)
                    done = pipelines[name](out.captured, i, image, groups, class_ids)
                    t.seconds += time.perf_counter() - t1
                    t.count_match += len(done.instances) == true_count
                    t.all.add(done.mask, truth)
                    if is_faithful:
                        t.faithful.add(done.mask, truth)
                    t.masks.append(done.mask)
    return _evaluation(tallies, checks, images, faithful, gen_seconds)


def _evaluation(tallies: dict[str, _Tally], checks, images, faithful: int, gen_seconds: float) -> ToyEvaluation:
    n_images = max(len(images), 1)
    by_shape, confusion = shape_breakdown(checks)
    return ToyEvaluation(
        fidelity=float(np.mean([c.ok for c in checks])) if checks else float("nan"),
        colour_fidelity=float(np.mean([c.colour_ok for c in checks])) if checks else float("nan"),
        miou={name: t.all.miou() for name, t in tallies.items()},
        miou_ignore_wrong={name: t.all.miou_ignore_wrong() for name, t in tallies.items()},
        ignore_share={name: t.all.ignore_share() for name, t in tallies.items()},
        miou_faithful={name: t.faithful.miou() for name, t in tallies.items()} if faithful else {},
        faithful_images=faithful,
        objects=len(checks),
        instance_count_match={name: t.count_match / n_images for name, t in tallies.items()},
        per_class_iou={name: [round(float(v), 4) for v in t.all.per_class()] for name, t in tallies.items()},
        seconds_per_image=gen_seconds / n_images,
        annotate_seconds_per_image={name: t.seconds / n_images for name, t in tallies.items()},
        fidelity_by_shape=by_shape,
        shape_confusion=confusion,
        images=images,
        masks={name: t.masks for name, t in tallies.items()},
    )

"""One generation run: config -> model, prompts, annotator -> samples written through the store."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from synthaug.annotators import build_annotator, prepare_annotator
from synthaug.annotators.pipeline import AnnotationPipeline
from synthaug.config import GenerationConfig
from synthaug.generator import (
    check_model_before_load,
    generate_samples,
    layout_token_groups,
    load_model,
    resolve_scheduler_class,
)
from synthaug.store import STORE_FILE, StoreWriter, create_store


def samples_from_config(cfg: GenerationConfig, model, specs, annotator, batch_size: int | None = None):
    """generate_samples with the config's sampling, annotation and size settings (one place for both
    `synthaug generate` and the producer)."""
    pipeline = AnnotationPipeline(
        annotator, cfg.class_vocabulary(), cfg.refine, cfg.refine_params, cfg.min_instance_area
    )
    return generate_samples(
        model,
        specs,
        pipeline,
        batch_size=batch_size or cfg.batch_size,
        steps=cfg.steps,
        guidance=cfg.guidance,
        height=cfg.height,
        width=cfg.width,
        layout=cfg.layout_settings(),
    )


def run_generation(cfg: GenerationConfig, out: str | Path, num: int | None = None, progress: bool = True) -> int:
    """Generate `num` (default cfg.num) annotated samples into the store at `out`; returns how many were written.

    Everything that can be checked is checked before the store is created: the config keys and the model
    folder before the model loads; then the model (LoRA files, the annotator's attention factors) and every
    prompt against its tokenizers. An existing store's vocabulary is checked before the model loads.
    """
    vocab = cfg.class_vocabulary()
    annotator = build_annotator(cfg.method, cfg.annotator)
    prepare_annotator(annotator, vocab=vocab)
    specs = cfg.prompt_specs(num)
    check_model_before_load(cfg.model, cfg.height, cfg.width, layout=cfg.layout is not None, config=cfg.model_config)
    if cfg.scheduler is not None:
        resolve_scheduler_class(cfg.scheduler)
    if (Path(out) / STORE_FILE).exists():  # an existing store: its vocabulary checked before the model loads
        create_store(out, vocab, image_format=cfg.image_format)
    model = load_model(
        cfg.model, device=cfg.device, scheduler=cfg.scheduler, loras=cfg.lora_weights(), config=cfg.model_config
    )
    prepare_annotator(annotator, model=model)
    for spec in specs:  # every class word found, no prompt too long for a tokenizer: before the store exists
        layout_token_groups(model, spec)
    create_store(out, vocab, image_format=cfg.image_format)
    samples = samples_from_config(cfg, model, specs, annotator)
    written = 0
    with (
        StoreWriter(out, segment=cfg.segment) as writer,
        tqdm(total=len(specs), desc="generate", unit="img", disable=not progress) as bar,
    ):
        for sample in samples:
            writer.add(sample)
            written += 1
            bar.update(1)
    return written

"""Annotators: captured attention and UNet features -> masks. Build one by name with `build_annotator`."""

from __future__ import annotations

from typing import Any

from synthaug.annotators.base import Annotation, Annotator
from synthaug.annotators.cross_attention import CrossAttentionAnnotator, CrossAttentionParams
from synthaug.annotators.decoder import DecoderAnnotator, DecoderParams
from synthaug.annotators.self_refined import SelfRefinedAnnotator, SelfRefinedParams
from synthaug.attention import check_capture

ANNOTATORS = {
    "cross_attention": (CrossAttentionAnnotator, CrossAttentionParams),
    "self_refined": (SelfRefinedAnnotator, SelfRefinedParams),
    "decoder": (DecoderAnnotator, DecoderParams),
}

__all__ = ["ANNOTATORS", "Annotation", "Annotator", "build_annotator", "fit_annotator", "prepare_annotator"]


def build_annotator(method: str, params: dict[str, Any] | None = None) -> Annotator:
    """An annotator by method name with its parameters; errors name the unknown method or parameter."""
    if method not in ANNOTATORS:
        raise ValueError(f"method={method!r} is unknown: use one of {sorted(ANNOTATORS)}")
    cls, params_cls = ANNOTATORS[method]
    params = dict(params or {})
    known = set(params_cls.__dataclass_fields__)
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"annotator.{unknown[0]} is not a parameter of method {method!r}; known: {sorted(known)}")
    for key, value in params.items():
        if isinstance(value, list):
            params[key] = tuple(value)
    return cls(params_cls(**params))


def fit_annotator(annotator: Annotator, unet) -> None:
    """Choose the annotator's per-model defaults (attention factors) for `unet`, and check that the
    attention it reads exists there. Cheap, and harmless to repeat."""
    if hasattr(annotator, "prepare_for"):
        annotator.prepare_for(unet)
    check_capture(annotator.capture, unet)


def prepare_annotator(annotator: Annotator, vocab=None, model=None) -> None:
    """Fit an annotator to the model it will run with (`fit_annotator`) and check it against the
    class vocabulary and/or that model: the learned decoder was trained for one vocabulary and
    model. The vocabulary can be checked before the model loads."""
    if model is not None:
        fit_annotator(annotator, model.unet)
    for check, arg in (("check_vocabulary", vocab), ("check_model", model)):
        if arg is not None and hasattr(annotator, check):
            getattr(annotator, check)(arg)

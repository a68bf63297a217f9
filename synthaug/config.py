"""The generation config (gen.yaml): what to generate, with which model and annotator, and its checks.

Every key is checked when the config is read, before any model loads; an error names the key,
the rule and the value, and says what to write instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from synthaug.prompts import PromptSpec, caption_prompts, template_prompts
from synthaug.vocabulary import ClassVocabulary

PROMPT_SOURCES = ("toy", "templates", "captions")


class ConfigError(ValueError):
    """A config key has a wrong value; the message names the key and the fix."""


@dataclass
class GenerationConfig:
    """The keys of gen.yaml, with their defaults (the shipped toy model and the cross-attention method)."""

    model: str | None = None
    device: str = "cpu"
    scheduler: str | None = None
    lora: Any = None
    steps: int = 25
    guidance: float = 3.0
    height: int | None = None
    width: int | None = None
    batch_size: int = 8
    seed: int = 0
    num: int = 64
    vocabulary: Any = "toy"
    prompts: dict[str, Any] = field(default_factory=lambda: {"source": "toy"})
    method: str = "cross_attention"
    annotator: dict[str, Any] = field(default_factory=dict)
    refine: str = "none"
    refine_params: dict[str, Any] = field(default_factory=dict)
    min_instance_area: float = 0.002
    image_format: str = "png"
    segment: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> GenerationConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: {sorted(known)}")
        cfg = cls(**data)
        cfg.check(where)
        return cfg

    @classmethod
    def load(cls, path: str | Path) -> GenerationConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
        return cls.from_dict(data, where=str(path))

    def check(self, where: str = "config") -> None:
        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                raise ConfigError(f"{where}: key {key!r} {rule}, got {getattr(self, key)!r}")

        for key in ("steps", "batch_size", "num"):
            need(isinstance(getattr(self, key), int) and getattr(self, key) >= 1, key, "must be an integer >= 1")
        need(isinstance(self.guidance, (int, float)) and self.guidance >= 0, "guidance", "must be a number >= 0")
        for key in ("height", "width"):
            need(
                getattr(self, key) is None or (isinstance(getattr(self, key), int) and getattr(self, key) > 0),
                key,
                "must be a positive integer or null (the model's size)",
            )
        need(isinstance(self.seed, int), "seed", "must be an integer")
        need(
            isinstance(self.prompts, dict) and self.prompts.get("source", "toy") in PROMPT_SOURCES,
            "prompts",
            f"must be a mapping whose 'source' is one of {PROMPT_SOURCES}",
        )
        need(self.min_instance_area >= 0, "min_instance_area", "must be >= 0 (a share below 1, pixels from 1)")
        from synthaug.annotators import ANNOTATORS
        from synthaug.annotators.refine import REFINERS
        from synthaug.store import IMAGE_FORMATS

        need(self.method in ANNOTATORS, "method", f"must be one of {sorted(ANNOTATORS)}")
        need(self.refine in REFINERS, "refine", f"must be one of {REFINERS}")
        need(self.image_format in IMAGE_FORMATS, "image_format", f"must be one of {sorted(IMAGE_FORMATS)}")
        if self.prompts.get("source", "toy") == "toy":
            need(self.vocabulary == "toy", "vocabulary", "must be 'toy' when prompts.source is 'toy'")
        self.class_vocabulary(where)
        self.lora_weights(where)

    def lora_weights(self, where: str = "config") -> list:
        """`lora` as a list of LoraWeights: a path, or a list of paths or {path, scale} mappings."""
        from synthaug.generator import LoraWeights

        items = [] if self.lora is None else self.lora if isinstance(self.lora, list) else [self.lora]
        out = []
        for item in items:
            entry = {"path": item} if isinstance(item, str) else item
            ok = isinstance(entry, dict) and set(entry) <= {"path", "scale"} and isinstance(entry.get("path"), str)
            scale = entry.get("scale", 1.0) if ok else None
            if not ok or not isinstance(scale, (int, float)) or isinstance(scale, bool):
                raise ConfigError(
                    f"{where}: key 'lora' has {item!r}: give a LoRA file's path, or a list of paths or of "
                    "{path: FILE, scale: NUMBER} mappings"
                )
            if not Path(entry["path"]).is_file():
                raise ConfigError(
                    f"{where}: key 'lora' names {entry['path']!r}, which is not a file: give a local .safetensors "
                    "LoRA file (nothing is downloaded)"
                )
            out.append(LoraWeights(Path(entry["path"]), float(scale)))
        return out

    def class_vocabulary(self, where: str = "config") -> ClassVocabulary:
        if self.vocabulary == "toy":
            from synthaug.toy.world import TOY_VOCABULARY

            return TOY_VOCABULARY
        if not isinstance(self.vocabulary, dict):
            raise ConfigError(f"{where}: key 'vocabulary' must be 'toy' or a mapping with names and palette")
        try:
            return ClassVocabulary.from_dict(self.vocabulary)
        except (KeyError, TypeError, ValueError) as err:
            raise ConfigError(f"{where}: key 'vocabulary': {err}") from None

    def prompt_specs(self, num: int | None = None) -> list[PromptSpec]:
        """The prompts to generate, with their targets and seeds."""
        num = num or self.num
        src = self.prompts.get("source", "toy")
        vocab = self.class_vocabulary()
        if src == "toy":
            from synthaug.toy.evaluate import toy_prompts

            return [p.to_spec() for p in toy_prompts(num, seed=10_000 * (self.seed + 1))]
        if src == "templates":
            templates = self.prompts.get("templates") or ["a photo of a {cls}"]
            lo_hi = tuple(self.prompts.get("classes_per_prompt", (1, 1)))
            return template_prompts(vocab, templates, num, self.seed, lo_hi)  # type: ignore[arg-type]
        captions = self.prompts.get("captions_file")
        if not captions:
            raise ConfigError("prompts.captions_file is missing: give a file of 'caption<TAB>class1,class2' lines")
        return caption_prompts(vocab, captions, num, self.seed)

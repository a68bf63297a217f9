"""The generation config (gen.yaml): what to generate, with which model and annotator, and its checks.

Every key is checked when the config is read, before any model loads; an error names the key,
the rule and the value, and says what to write instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from synthaug.prompts import PromptSpec, caption_prompts, template_prompts
from synthaug.vocabulary import ClassVocabulary

if TYPE_CHECKING:
    from synthaug.layout import LayoutSettings

PROMPT_SOURCES = ("toy", "templates", "captions")


def template_fields_ok(template: object) -> bool:
    """Whether `template` is a str whose only format field is {cls} (str.format would fail on any other)."""
    import string

    if not isinstance(template, str):
        return False
    try:
        fields_ = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError:
        return False
    return "cls" in fields_ and set(fields_) == {"cls"}


class ConfigError(ValueError):
    """A config key has a wrong value; the message names the key and the fix."""


@dataclass
class GenerationConfig:
    """The keys of gen.yaml, with their defaults (the shipped toy model and the cross-attention method)."""

    model: str | None = None
    model_config: str | None = None  # a single-file `model`'s diffusers folder (configs, tokenizers, scheduler)
    device: str = "cpu"
    scheduler: str | None = None
    lora: Any = None
    layout: Any = None
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
        if data.get("layout") is not None and "prompts" in data:
            raise ConfigError(
                f"{where}: keys 'layout' and 'prompts' are both set: with 'layout' each prompt names its layout's "
                "classes (layout.template); remove 'prompts'"
            )
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
        for key in ("model", "model_config"):
            need(getattr(self, key) is None or isinstance(getattr(self, key), str), key, "must be a path or null")
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
        if self.prompts.get("source", "toy") == "toy" and self.layout is None:
            need(self.vocabulary == "toy", "vocabulary", "must be 'toy' when prompts.source is 'toy'")
        self.class_vocabulary(where)
        self.lora_weights(where)
        self.layout_settings(where)

    def layout_settings(self, where: str = "config") -> LayoutSettings | None:
        """`layout` (synthaug.layout): masks (a folder of label PNGs), label, scale, template; None if unset."""
        from synthaug.layout import LABELS, LayoutSettings

        if self.layout is None:
            return None
        known = {"masks", "label", "scale", "template", "reduce_zero_label"}
        data = self.layout
        if not isinstance(data, dict) or not isinstance(data.get("masks"), str) or set(data) - known:
            raise ConfigError(
                f"{where}: key 'layout' must be a mapping with 'masks' (a folder of label PNGs) and optionally "
                f"'label' ({' | '.join(LABELS)}), 'scale' (the ControlNet's weight), 'template' and "
                f"'reduce_zero_label', got {data!r}"
            )
        settings = LayoutSettings(Path(data["masks"]), **{k: v for k, v in data.items() if k != "masks"})
        if not settings.masks.is_dir() or not settings.files():
            raise ConfigError(f"{where}: key 'layout.masks' {data['masks']!r} is not a folder holding .png label masks")
        if settings.label not in LABELS:
            raise ConfigError(f"{where}: key 'layout.label' must be one of {LABELS}, got {settings.label!r}")
        scale = settings.scale
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
            raise ConfigError(f"{where}: key 'layout.scale' must be a number >= 0 (1.0 by default), got {scale!r}")
        if not template_fields_ok(settings.template):
            raise ConfigError(
                f"{where}: key 'layout.template' must hold '{{cls}}' where the classes go and no other "
                f"{{...}} field (write a brace as {{{{ or }}}}), got {settings.template!r}"
            )
        if not isinstance(settings.reduce_zero_label, bool):
            raise ConfigError(
                f"{where}: key 'layout.reduce_zero_label' must be true or false, got {settings.reduce_zero_label!r}"
            )
        vocab = self.class_vocabulary(where)
        palette, names = vocab.palette, vocab.names
        for i, colour in enumerate(palette):  # the control image tells classes apart by colour alone
            if colour in palette[:i]:
                raise ConfigError(
                    f"{where}: key 'vocabulary.palette' gives {names[palette.index(colour)]!r} and {names[i]!r} the "
                    f"same colour {list(colour)}: with 'layout' the ControlNet sees classes by colour; give each its "
                    "own (the palette the ControlNet was trained with)"
                )
        return settings

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
        layout = self.layout_settings()
        if layout is not None:
            from synthaug.layout import layout_prompts

            return layout_prompts(layout, vocab, num, self.seed)
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

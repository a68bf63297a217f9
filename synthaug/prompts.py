"""Prompts and the token positions of the words in them.

A word's tokens are found through the fast tokenizer's character offsets, so words that a
BPE tokenizer splits into several tokens (Stable Diffusion's CLIP) map to all of their
tokens, and word-level tokenizers (the toy model) map to one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from synthaug.vocabulary import ClassVocabulary


class WordNotInPromptError(ValueError):
    """A class word was asked for that the prompt does not contain."""


def word_spans(prompt: str, word: str) -> list[tuple[int, int]]:
    """Character spans of whole-word occurrences of `word` (case-insensitive; may be several words)."""
    pattern = r"(?<![\w])" + r"\s+".join(re.escape(w) for w in word.split()) + r"(?![\w])"
    return [m.span() for m in re.finditer(pattern, prompt, flags=re.IGNORECASE)]


def token_positions(tokenizer, prompt: str, word: str, occurrence: int | None = None) -> list[int]:
    """Indices of the tokens of `word` in the tokenized `prompt` (start token included in the count).

    All occurrences unless `occurrence` picks one (0-based). Raises WordNotInPromptError naming the
    word and the prompt when it is absent, or when truncation to the tokenizer's length cut it off.
    """
    spans = word_spans(prompt, word)
    if not spans:
        raise WordNotInPromptError(f"the word {word!r} is not in the prompt {prompt!r}; add it or pick another prompt")
    if occurrence is not None:
        if occurrence >= len(spans):
            raise WordNotInPromptError(
                f"the prompt {prompt!r} has {len(spans)} occurrence(s) of {word!r}, not {occurrence + 1}"
            )
        spans = [spans[occurrence]]
    enc = tokenizer(prompt, return_offsets_mapping=True, truncation=True, max_length=tokenizer.model_max_length)
    positions = []
    for start, end in spans:
        hits = [i for i, (a, b) in enumerate(enc["offset_mapping"]) if b > a and a < end and b > start]
        if not hits:
            raise WordNotInPromptError(
                f"the word {word!r} of prompt {prompt!r} falls past the tokenizer's {tokenizer.model_max_length} "
                "tokens; shorten the prompt"
            )
        positions.extend(hits)
    return positions


def words_positions(tokenizer, prompt: str, words: Sequence[str], occurrence: int | None = None) -> list[int]:
    """Token positions of several words (e.g. a colour and a shape), merged and sorted."""
    return sorted({p for w in words for p in token_positions(tokenizer, prompt, w, occurrence)})


@dataclass(frozen=True)
class ObjectTarget:
    """One thing to annotate in a prompt: its class id and the words (or phrases) that name it.

    Every occurrence of every word counts, unless `occurrence` picks one (0-based).
    """

    class_id: int
    words: tuple[str, ...]
    occurrence: int | None = None


@dataclass(frozen=True)
class PromptSpec:
    """A prompt, the targets to annotate in it, and its generation seed."""

    text: str
    targets: tuple[ObjectTarget, ...]
    seed: int
    meta: dict = field(default_factory=dict, compare=False)

    def token_groups(self, tokenizer) -> list[list[int]]:
        """Token positions of each target; raises WordNotInPromptError naming a missing word."""
        return [words_positions(tokenizer, self.text, t.words, t.occurrence) for t in self.targets]


def class_targets(vocab: ClassVocabulary, text: str, classes: Sequence[str]) -> tuple[ObjectTarget, ...]:
    """One target per class name, naming it by whichever of its words the prompt uses."""
    out = []
    for name in dict.fromkeys(classes):
        words = tuple(w for w in vocab.words_for(name) if word_spans(text, w))
        if not words:
            raise WordNotInPromptError(
                f"class {name!r} (words {list(vocab.words_for(name))}) is not in the prompt {text!r}: "
                "name it in the prompt, or add the word used as a synonym in the vocabulary"
            )
        out.append(ObjectTarget(vocab.id_of(name), words))
    return tuple(out)


def template_prompts(
    vocab: ClassVocabulary,
    templates: Sequence[str],
    num: int,
    seed: int = 0,
    classes_per_prompt: tuple[int, int] = (1, 1),
    joiner: str = " and a ",
) -> list[PromptSpec]:
    """`num` prompts from templates such as "a photo of a {cls}"; several classes are joined into {cls}.

    Classes are drawn in turn (balanced), from the vocabulary's foreground classes.
    """
    if not templates:
        raise ValueError("templates is empty: give at least one, e.g. 'a photo of a {cls}'")
    bad = [t for t in templates if "{cls}" not in t]
    if bad:
        raise ValueError(f"templates {bad} lack the '{{cls}}' placeholder where the class names go")
    lo, hi = classes_per_prompt
    fg = [vocab.names[i] for i in vocab.foreground_ids]
    if not 1 <= lo <= hi <= len(fg):
        raise ValueError(f"classes_per_prompt={classes_per_prompt}: need 1 <= min <= max <= {len(fg)} classes")
    rng = random.Random(seed)
    out = []
    for i in range(num):
        k = rng.randint(lo, hi)
        first = fg[i % len(fg)]
        names = [first, *rng.sample([c for c in fg if c != first], k - 1)]
        text = rng.choice(templates).format(cls=joiner.join(vocab.prompt_word(n) for n in names))
        out.append(PromptSpec(text, class_targets(vocab, text, names), seed * 1_000_003 + i))
    return out


def caption_prompts(
    vocab: ClassVocabulary, captions_file: str | Path, num: int | None = None, seed: int = 0, separator: str = ", "
) -> list[PromptSpec]:
    """Dataset Diffusion prompts: captions with their classes appended.

    The file holds one caption a line as ``caption<TAB>class1,class2``; each class is appended by
    its prompt word (`ClassVocabulary.prompt_word`: "potted plant" for VOC's class pottedplant), as
    Dataset Diffusion appends words the text encoder knows ("a dog on grass, dog"). Lines cycle if
    `num` exceeds them.
    """
    lines = [ln for ln in Path(captions_file).read_text().splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"captions file {captions_file} is empty: one 'caption<TAB>class1,class2' a line")
    specs = []
    for n, line in enumerate(lines, 1):
        caption, sep, classes = line.partition("\t")
        names = [c.strip() for c in classes.split(",") if c.strip()]
        if not sep or not names:
            raise ValueError(f"{captions_file}:{n}: expected 'caption<TAB>class1,class2', got {line!r}")
        for c in names:
            vocab.id_of(c)
        text = caption.strip() + separator + separator.join(vocab.prompt_word(c) for c in names)
        specs.append((text, names))
    count = len(specs) if num is None else num
    return [
        PromptSpec(
            specs[i % len(specs)][0],
            class_targets(vocab, specs[i % len(specs)][0], specs[i % len(specs)][1]),
            seed * 1_000_003 + i,
        )
        for i in range(count)
    ]


def bias_prompts(
    candidates: Sequence[PromptSpec], weights: Mapping[str, float], vocab: ClassVocabulary, n: int, seed: int
) -> list[PromptSpec]:
    """`n` of `candidates` (seeded, without replacement), each drawn with probability proportional to the
    mean weight of the classes it targets (`weights` by class name; classes not named weigh 1)."""
    if n > len(candidates):
        raise ValueError(f"cannot pick {n} prompts from {len(candidates)} candidates")
    w = np.array(
        [
            np.mean([weights.get(vocab.names[t.class_id], 1.0) for t in c.targets]) if c.targets else 1.0
            for c in candidates
        ]
    )
    rng = np.random.default_rng([seed, 0xB1A5])
    picks = rng.choice(len(candidates), size=n, replace=False, p=w / w.sum())
    return [candidates[i] for i in sorted(picks)]

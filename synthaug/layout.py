"""Layouts: real label masks that lay out generated images through a ControlNet (FreeMask's route).

A layout is a label PNG of the store's vocabulary (class ids, 255 = ignore). Each one gives a prompt that
names its classes, and a control image: the mask painted with the vocabulary's palette (for a
segmentation ControlNet, give the palette it was trained with, e.g. ADE20K's). The sample's label is
chosen by `label`:

- ``layout``: the layout itself, resized to the image (synthaug.augment.resize_mask; FreeMask: the mask is
  the label);
- ``agree``: the layout where the attention annotator agrees with it, 255 where it does not (pixels the
  image did not follow are left out of training, as FreeMask's filtering leaves noisy pixels out);
- ``annotator``: the annotator's label, as for any prompt (the layout only steers the image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthaug.annotators.base import Annotation
from synthaug.prompts import PromptSpec, class_targets
from synthaug.vocabulary import IGNORE_INDEX, ClassVocabulary

LABELS = ("layout", "agree", "annotator")
MASK_SUFFIXES = (".png",)


@dataclass(frozen=True)
class LayoutSettings:
    """gen.yaml's `layout:` key: where the masks are, which label a sample gets, the ControlNet's weight."""

    masks: Path
    label: str = "layout"
    scale: float = 1.0
    template: str = "a photo of a {cls}"
    reduce_zero_label: bool = False  # mmseg's ADE20K convention: 0 is "other" (ignored), class k is id k + 1
    joiner: str = " and a "

    @property
    def capture(self) -> bool:
        """Whether the annotator's attention is needed (every label but the layout itself)."""
        return self.label != "layout"

    def files(self) -> list[Path]:
        """The layout PNGs, sorted by path (so a run is the same wherever it is listed)."""
        return sorted(p for p in self.masks.rglob("*") if p.suffix.lower() in MASK_SUFFIXES and p.is_file())

    def fingerprint(self) -> dict[str, Any]:
        return {
            "layout_masks": str(self.masks),
            "layout_label": self.label,
            "layout_scale": self.scale,
            "layout_template": self.template,
        }


def read_layout(path: Path, vocab: ClassVocabulary, reduce_zero_label: bool = False) -> np.ndarray:
    """A layout mask (H, W) uint8 in the vocabulary's ids (with `reduce_zero_label`, 0 -> 255 and k -> k - 1,
    as mmseg reads ADE20K); ValueError naming the file for a class id the vocabulary does not have."""
    from synthaug.imageio import read_mask

    mask = read_mask(path)
    if reduce_zero_label:
        mask = np.where(mask == 0, IGNORE_INDEX, np.where(mask == IGNORE_INDEX, IGNORE_INDEX, mask - 1)).astype(
            np.uint8
        )
    ids = np.unique(mask)
    bad = [int(i) for i in ids if i != IGNORE_INDEX and i >= len(vocab)]
    if bad:
        raise ValueError(
            f"layout {path} has class ids {bad}, but the vocabulary has {len(vocab)} classes ({list(vocab.names)}): "
            "layouts are label PNGs in the vocabulary's ids (255 = ignore)"
        )
    return mask


def layout_prompts(settings: LayoutSettings, vocab: ClassVocabulary, num: int, seed: int = 0) -> list[PromptSpec]:
    """`num` prompts, one per layout in turn (cycling) from the `seed`-th (the producer's seed moves on with
    each batch, so its batches walk through the layouts), each naming the layout's foreground classes by
    the template; the layout's path is in the spec's meta. Layouts with no foreground class are passed over."""
    files = settings.files()
    if not files:
        raise ValueError(f"layout.masks {settings.masks} holds no .png label masks")
    classes: dict[Path, list[str]] = {}
    specs: list[PromptSpec] = []
    k = 0
    while len(specs) < num:
        if k == len(files) and not specs:
            raise ValueError(
                f"none of the {len(files)} layouts in {settings.masks} has a foreground class of {list(vocab.names)}"
            )
        path = files[(seed + k) % len(files)]
        if path not in classes:
            present = set(np.unique(read_layout(path, vocab, settings.reduce_zero_label)).tolist())
            classes[path] = [vocab.names[i] for i in vocab.foreground_ids if i in present]
        names, k = classes[path], k + 1
        if names:
            text = settings.template.format(cls=settings.joiner.join(vocab.prompt_word(n) for n in names))
            meta = {"layout": str(path)}
            specs.append(PromptSpec(text, class_targets(vocab, text, names), seed * 1_000_003 + k - 1, meta))
    return specs


def layout_batch(
    settings: LayoutSettings, specs: Sequence[PromptSpec], vocab: ClassVocabulary, height: int, width: int
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The specs' layouts at the image size (synthaug.augment.resize_mask) and their control images."""
    from synthaug.augment import resize_mask

    layouts = [
        resize_mask(read_layout(Path(s.meta["layout"]), vocab, settings.reduce_zero_label), height, width)
        for s in specs
    ]
    return layouts, [control_image(m, vocab) for m in layouts]


def control_image(mask: np.ndarray, vocab: ClassVocabulary) -> np.ndarray:
    """The control image of a layout: (H, W, 3) uint8, each class in its palette colour, ignore black."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(vocab)] = np.asarray(vocab.palette, np.uint8)
    return lut[mask]


def layout_annotation(
    layout: np.ndarray,
    class_ids: Sequence[int],
    label: str,
    found: Annotation | None = None,
    background_id: int | None = 0,
) -> tuple[Annotation, dict[str, float]]:
    """The sample's annotation under `label` (module docstring) and the layout figure for its quality (with an
    annotator): `layout_agreement`, the share of the layout's object pixels (neither background nor ignore)
    where the annotator finds the layout's class; 1 for a layout without object pixels."""
    figures: dict[str, float] = {}
    labelled = layout != IGNORE_INDEX
    if found is not None:
        agree = labelled & (found.mask == layout)
        objects = labelled & (layout != background_id) if background_id is not None else labelled
        figures["layout_agreement"] = float((agree & objects).sum() / objects.sum()) if objects.any() else 1.0
    if label == "annotator":
        assert found is not None
        return found, figures
    winner = np.full(layout.shape, -1, np.int64)
    for k, c in enumerate(class_ids):
        winner[layout == c] = k
    if label == "layout":
        return Annotation(layout.copy(), winner, labelled.astype(np.float32)), figures
    assert found is not None
    mask = np.where(agree, layout, IGNORE_INDEX).astype(np.uint8)
    return Annotation(mask, np.where(agree, winner, -1), np.where(agree, found.confidence, 0.0)), figures

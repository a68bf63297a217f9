"""mmseg pipeline transforms: blur (any sample) and X-Paste-style pasting of synthetic objects onto real images."""

from __future__ import annotations

import logging

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from synthaug.annotators.instances import instances_from_mask
from synthaug.augment import BlurAugment, SpliceAugment
from synthaug.sample import Sample
from synthaug.store import SampleStore
from synthaug.vocabulary import match_classes

log = logging.getLogger(__name__)


def _as_sample(results: dict) -> Sample:
    img = np.ascontiguousarray(results["img"][..., ::-1]).astype(np.uint8)  # the pipeline holds BGR
    return Sample(img, results["gt_seg_map"].astype(np.uint8))


@TRANSFORMS.register_module()
class SynthaugBlur(BaseTransform):
    """Gaussian, motion and edge-only blur (synthaug.augment.BlurAugment's parameters); masks unchanged."""

    def __init__(self, **params) -> None:
        self.aug = BlurAugment(**params)

    def transform(self, results: dict) -> dict:
        params = self.aug.sample(np.random.default_rng(np.random.randint(2**31)))
        if params:
            out = self.aug.apply(_as_sample(results), params)
            results["img"] = np.ascontiguousarray(out.image[..., ::-1])
        return results


@TRANSFORMS.register_module()
class SynthaugPaste(BaseTransform):
    """Paste objects of a random synthetic sample from `store` onto the image (X-Paste), with feathered edges.

    Put it after LoadAnnotations in a real dataset's pipeline. p, max_paste, paste_scale and feather
    are SpliceAugment's. `classes` (the dataset's class names, e.g. `{{_base_.metainfo.classes}}` or
    the dataset class's METAINFO) and `class_map` put pasted pixels in the dataset's ids, as the mix
    does; without `classes` the store's ids are pasted as they are, and a warning says so once.
    Corrupt store samples are skipped.
    """

    def __init__(
        self,
        store: str,
        p: float = 0.5,
        max_paste: int = 3,
        paste_scale=(0.5, 1.0),
        feather=1.0,
        classes: list[str] | None = None,
        class_map: dict | None = None,
    ):
        self.aug = SpliceAugment(
            p_grid=0.0, p_paste=p, max_paste=max_paste, paste_scale=tuple(paste_scale), feather=feather
        )
        self.store_path = store
        self._store: SampleStore | None = None
        self.classes, self.class_map = (list(classes) if classes is not None else None), class_map
        self._lut: np.ndarray | None = None

    def _open(self) -> SampleStore:
        """The store, and the lookup table from its class ids to the dataset's (checked once, at first use)."""
        if self._store is None:
            store = SampleStore(self.store_path)
            if self.classes is not None:
                self._lut = match_classes(store.vocabulary, self.classes, self.class_map, key="SynthaugPaste.class_map")
            else:
                log.warning(
                    "SynthaugPaste: no classes given, so objects from %s are pasted with the store's class ids; "
                    "give classes=<the dataset's class names> to map them by name",
                    self.store_path,
                )
            self._store = store
        return self._store

    def _draw(self, rng: np.random.Generator, n: int) -> list[Sample]:
        store = self._open()
        out: list[Sample] = []
        for _ in range(4 * n):  # bounded: a store of corrupt samples must not hang the pipeline
            if len(out) == n or not len(store):
                break
            s = store.try_read(int(rng.integers(len(store))))
            if s is not None:
                if not s.instances:
                    s.instances = instances_from_mask(s.mask)
                out.append(s if self._lut is None else s.relabelled(self._lut))
        return out

    def transform(self, results: dict) -> dict:
        rng = np.random.default_rng(np.random.randint(2**31))
        out = self.aug.paste(_as_sample(results), rng, lambda n: self._draw(rng, n))
        results["img"] = np.ascontiguousarray(out.image[..., ::-1])
        results["gt_seg_map"] = out.mask
        return results

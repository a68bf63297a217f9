"""mmseg pipeline transforms: blur (any sample) and X-Paste-style pasting of synthetic objects onto real images."""

from __future__ import annotations

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS

from synthaug.annotators.instances import instances_from_mask
from synthaug.augment import BlurAugment, SpliceAugment
from synthaug.sample import Sample
from synthaug.store import SampleStore


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
    are SpliceAugment's. Corrupt store samples are skipped.
    """

    def __init__(self, store: str, p: float = 0.5, max_paste: int = 3, paste_scale=(0.5, 1.0), feather=1.0):
        self.aug = SpliceAugment(
            p_grid=0.0, p_paste=p, max_paste=max_paste, paste_scale=tuple(paste_scale), feather=feather
        )
        self.store_path = store
        self._store: SampleStore | None = None

    def _draw(self, rng: np.random.Generator, n: int) -> list[Sample]:
        if self._store is None:
            self._store = SampleStore(self.store_path)
        out: list[Sample] = []
        for _ in range(4 * n):  # bounded: a store of corrupt samples must not hang the pipeline
            if len(out) == n or not len(self._store):
                break
            s = self._store.try_read(int(rng.integers(len(self._store))))
            if s is not None:
                if not s.instances:
                    s.instances = instances_from_mask(s.mask)
                out.append(s)
        return out

    def transform(self, results: dict) -> dict:
        rng = np.random.default_rng(np.random.randint(2**31))
        out = self.aug.paste(_as_sample(results), rng, lambda n: self._draw(rng, n))
        results["img"] = np.ascontiguousarray(out.image[..., ::-1])
        results["gt_seg_map"] = out.mask
        return results

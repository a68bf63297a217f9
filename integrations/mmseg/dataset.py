"""`SyntheticMixSegDataset`: mmseg's view of the core SyntheticMixDataset.

The real dataset is built from its own config and serves its items through its own pipeline,
unchanged. A synthetic sample goes through the same pipeline, except that the loading
transforms are replaced by what they would have produced (the image in BGR, as
LoadImageFromFile gives it, and the mask as LoadAnnotations gives it), so that splice and blur,
which act on the decoded sample, keep image and mask aligned.

Labels: the core matches the store's classes to `metainfo['classes']` by name, so a synthetic
mask arrives already in the ids the model trains on, which are the ids LoadAnnotations gives a
real mask after `reduce_zero_label` and the dataset's `label_map`. Neither is applied again here.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from mmengine.dataset import Compose
from mmseg.registry import DATASETS

from synthaug.mix import SyntheticMixDataset
from synthaug.sample import Sample

LOADING_TRANSFORMS = ("LoadImageFromFile", "LoadAnnotations")


def innermost_dataset(dataset: Any) -> Any:
    """The first dataset with a pipeline inside wrappers (ConcatDataset, RepeatDataset, ...)."""
    for _ in range(8):
        if hasattr(dataset, "pipeline"):
            return dataset
        inner = getattr(dataset, "datasets", None)
        dataset = inner[0] if inner else getattr(dataset, "dataset", None)
        if dataset is None:
            break
    raise TypeError("SyntheticMixSegDataset: the real dataset has no pipeline (nor a wrapped dataset with one)")


@DATASETS.register_module()
class SyntheticMixSegDataset:
    """A user's segmentation dataset (`real`, a dataset config) mixed with samples from `store`.

    Every other argument is SyntheticMixDataset's: ratio, seed, policy, min_quality, max_repeats,
    augment, class_map, empty, wait_timeout, reader_lease. The store's classes are matched by name to
    the real dataset's `metainfo['classes']` at start (class_map={store name: dataset name, id or None}
    for names that differ); a store class with no match fails, with a diff of the names.
    """

    def __init__(self, real: dict, store: str, ratio: Any = 0.25, seed: int = 0, lazy_init: bool = False, **mix: Any):
        self.real_cfg = copy.deepcopy(real)
        self.store, self.ratio, self.seed, self.mix_kwargs = store, ratio, seed, mix
        self.real = DATASETS.build(real) if isinstance(real, dict) else real
        self.mix: SyntheticMixDataset | None = None
        self._fully_initialized = False
        if not lazy_init:
            self.full_init()

    @property
    def metainfo(self) -> dict:
        return copy.deepcopy(self.real.metainfo)

    def full_init(self) -> None:
        """Initialise the real dataset, then open the store and check its classes against the real ones."""
        if self._fully_initialized:
            return
        self.real.full_init()
        self.inner = innermost_dataset(self.real)
        pipeline = self.inner.pipeline
        self.pipeline = pipeline if isinstance(pipeline, Compose) else Compose(pipeline)
        try:
            self.mix = SyntheticMixDataset(
                self.real,
                self.store,
                ratio=self.ratio,
                seed=self.seed,
                real_classes=list(self.real.metainfo["classes"]),
                synthetic_transform=self.synthetic_item,
                **self.mix_kwargs,
            )
        except ValueError as err:
            raise ValueError(f"SyntheticMixSegDataset (train_dataloader.dataset): {err}") from None
        self._fully_initialized = True

    def __len__(self) -> int:
        self.full_init()
        assert self.mix is not None
        return len(self.mix)

    def __getitem__(self, index: int) -> Any:
        self.full_init()
        assert self.mix is not None
        return self.mix[index]

    def get_data_info(self, index: int) -> dict:
        """The real dataset's data info, or a synthetic sample's paths (for tools that inspect datasets)."""
        assert self.mix is not None
        index, epoch, iteration = self.mix.place(index)
        kind, j = self.mix.locate(index, epoch, iteration)
        if kind == "real":
            return self.real.get_data_info(j)
        rec, store = self.mix.pool.records[j], self.mix.pool.store
        return dict(img_path=store.path_of(rec, "image"), seg_map_path=store.path_of(rec, "mask"), synthetic=True)

    def synthetic_item(self, sample: Sample) -> dict:
        """Run a decoded synthetic sample through the real pipeline, past its loading transforms."""
        mask = sample.mask  # already in metainfo['classes'] ids (see the module docstring)
        results = dict(
            img=np.ascontiguousarray(sample.image[..., ::-1]),  # BGR, as LoadImageFromFile decodes
            img_path=f"synthaug:{sample.id}",
            seg_map_path=f"synthaug:{sample.id}",
            img_shape=sample.image.shape[:2],
            ori_shape=sample.image.shape[:2],
            gt_seg_map=mask,
            seg_fields=["gt_seg_map"],
            reduce_zero_label=getattr(self.inner, "reduce_zero_label", False),
            label_map=None,
            sample_idx=-1,
            synthetic=True,
        )
        for t in self.pipeline.transforms:
            if type(t).__name__ in LOADING_TRANSFORMS:
                if getattr(t, "to_float32", False):
                    results["img"] = results["img"].astype(np.float32)
                continue
            results = t(results)
            if results is None:
                raise RuntimeError(f"pipeline step {type(t).__name__} dropped synthetic sample {sample.id}")
        return results

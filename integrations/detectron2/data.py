"""The mix for detectron2: a dataset of dataset dicts, a mapper that takes in-memory synthetic samples, blur as
a detectron2 Augmentation, and the train loader builders (yacs and LazyConfig)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_train_loader
from detectron2.data import transforms as T
from synthaug.integrations.detectron2.catalog import (
    TASKS,
    check_instances,
    register_coco_entries,
    sample_to_dataset_dict,
    thing_classes,
)

from synthaug.augment import BlurAugment, MixAugment
from synthaug.mix import LOGGED_COUNTERS, SyntheticMixDataset
from synthaug.store import SampleStore, wait_for_store
from synthaug.vocabulary import check_same_names


class BlurTransform(T.Transform):
    """Blur the image with parameters drawn once (synthaug.augment.BlurAugment); geometry and masks unchanged."""

    def __init__(self, aug: BlurAugment, params: dict, mask: np.ndarray | None) -> None:
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        from synthaug.sample import Sample

        mask = self.mask if self.mask is not None else np.zeros(img.shape[:2], np.uint8)
        return self.aug.apply(Sample(np.ascontiguousarray(img), mask), self.params).image

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> T.Transform:
        return T.NoOpTransform()


class SynthaugBlur(T.Augmentation):
    """detectron2 Augmentation: Gaussian, motion and edge-only blur, each with its probability (BlurAugment's)."""

    def __init__(self, **params: Any) -> None:
        super().__init__()
        self.aug = BlurAugment(**params)

    def get_transform(self, image: np.ndarray, sem_seg: np.ndarray | None = None) -> T.Transform:
        params = self.aug.sample(np.random.default_rng(np.random.randint(2**31)))
        return BlurTransform(self.aug, params, sem_seg) if params else T.NoOpTransform()


class SynthaugDatasetMapper(DatasetMapper):
    """DatasetMapper that also takes synthetic samples handed over in memory (`image_array`, `sem_seg_array`)."""

    def __call__(self, dataset_dict: dict) -> dict:
        if "image_array" not in dataset_dict:
            return super().__call__(dataset_dict)
        dataset_dict = copy.copy(dataset_dict)
        image = dataset_dict.pop("image_array")
        image = image[..., ::-1] if self.image_format == "BGR" else image
        image = np.ascontiguousarray(image)
        sem_seg = dataset_dict.pop("sem_seg_array", None)
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg.astype("long"))
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, shape)
        return dataset_dict


def real_dataset_dicts(names: str | Sequence[str]) -> tuple[list[dict], list[str] | None]:
    """The dataset dicts of registered dataset(s), and their thing classes (None for semantic datasets)."""
    names = [names] if isinstance(names, str) else list(names)
    dicts = [d for n in names for d in DatasetCatalog.get(n)]
    meta = MetadataCatalog.get(names[0])
    return dicts, list(meta.thing_classes) if hasattr(meta, "thing_classes") else None


def build_mix(
    real: str | Sequence[str],
    store: str,
    task: str = "instance",
    ratio: Any = 0.25,
    seed: int = 0,
    **mix: Any,
) -> SyntheticMixDataset:
    """A SyntheticMixDataset of registered real dataset(s) and a store, serving detectron2 dataset dicts."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}: use one of {TASKS}")
    dicts, real_things = real_dataset_dicts(real)
    if mix.get("empty") == "wait":
        wait_for_store(store, float(mix.get("wait_timeout", 600.0)))
    opened = SampleStore(store)
    vocabulary = opened.vocabulary
    if task == "instance":
        if real_things is not None:
            check_same_names(thing_classes(vocabulary), real_things, f"real dataset {real}", f"store {store} (things)")
        check_instances(opened)
    if isinstance(mix.get("augment"), dict):
        mix["augment"] = MixAugment.from_dict(mix["augment"])
    return SyntheticMixDataset(
        dicts,
        store,
        ratio=ratio,
        seed=seed,
        synthetic_transform=lambda sample: sample_to_dataset_dict(sample, vocabulary, task),
        **mix,
    )


class LoggingLoader:
    """Wraps a train loader: every `interval` batches it refreshes the pool, and with every batch it writes the
    mix's counters to detectron2's EventStorage. It is what lets a LazyConfig run log without a new hook."""

    def __init__(self, loader, mix: SyntheticMixDataset, interval: int = 50) -> None:
        self.loader, self.mix, self.interval = loader, mix, interval

    def __iter__(self):
        from detectron2.utils.events import get_event_storage

        images_per_iteration = getattr(self.loader, "batch_size", None) or 1
        for step, batch in enumerate(self.loader):
            if step and step % self.interval == 0:
                self.mix.refresh()
            try:
                storage = get_event_storage()
            except AssertionError:  # not inside a trainer
                storage = None
            if storage is not None:
                self.mix.follow(storage.iter, images_per_iteration)
                put_counters(storage, self.mix)
            yield batch


def put_counters(storage, mix: SyntheticMixDataset) -> None:
    """synthaug/* scalars: synthetic share, pool size, served and skipped samples."""
    c = mix.counters()
    for key in LOGGED_COUNTERS:
        storage.put_scalar(f"synthaug/{key}", float(c[key]), smoothing_hint=False)


def build_synthaug_train_loader(
    real: str | Sequence[str],
    store: str,
    mapper,
    total_batch_size: int,
    task: str = "instance",
    ratio: Any = 0.25,
    seed: int = 0,
    num_workers: int = 0,
    refresh_interval: int = 50,
    register_coco: Sequence[str] = (),
    **mix: Any,
):
    """The LazyConfig drop-in for `dataloader.train`: detectron2's train loader over the mix, logging to storage.

    `register_coco` ("name=annotations.json=image_root" entries) registers real datasets first, for
    scripts such as lazyconfig_train_net.py that register nothing themselves.
    """
    register_coco_entries(list(register_coco))
    dataset = build_mix(real, store, task=task, ratio=ratio, seed=seed, **mix)
    loader = build_detection_train_loader(
        dataset, mapper=mapper, total_batch_size=total_batch_size, num_workers=num_workers, aspect_ratio_grouping=False
    )
    return LoggingLoader(loader, dataset, refresh_interval)

"""The mix for detectron2: the mix as a torch Dataset of standard dataset dicts, a wrapper around the user's
mapper that skips failing synthetic items, blur as a detectron2 Augmentation, and the LazyConfig loader."""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog, build_detection_train_loader
from detectron2.data import transforms as T
from detectron2.data.build import get_detection_dataset_dicts
from detectron2.data.detection_utils import check_metadata_consistency
from synthaug.integrations.detectron2 import memory
from synthaug.integrations.detectron2.catalog import (
    SYNTHETIC_KEY,
    TASKS,
    check_instances,
    register_coco_entries,
    sample_to_dataset_dict,
)

from synthaug.augment import BlurAugment, MixAugment
from synthaug.mix import COUNTERS, SyntheticMixDataset, _proc_row
from synthaug.store import SampleStore, wait_for_store
from synthaug.vocabulary import IGNORE_INDEX, match_classes

log = logging.getLogger("detectron2.synthaug")


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
    """Kept for old configs: synthetic items are standard dataset dicts now, so detectron2's own DatasetMapper
    (or yours) reads them. This one also reads the old in-memory form (`image_array`, `sem_seg_array`)."""

    def __call__(self, dataset_dict: dict) -> dict:
        if "image_array" not in dataset_dict:
            return super().__call__(dataset_dict)
        dataset_dict = copy.copy(dataset_dict)
        image = dataset_dict.pop("image_array")
        image = np.ascontiguousarray(image[..., ::-1] if self.image_format == "BGR" else image)
        aug_input = T.AugInput(image, sem_seg=dataset_dict.pop("sem_seg_array", None))
        transforms = self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg.astype("long"))
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict


# ---------------------------------------------------------------------------------------------- the mix


class MixAsDataset(torch.utils.data.Dataset):
    """The mix as a map-style torch Dataset: detectron2's get_detection_dataset_dicts passes it through as is,
    so a DatasetCatalog entry that returns it trains through the user's own build_train_loader.

    Indexing gives full dataset dicts. Iterating gives each item's annotations only (real dicts as they are;
    synthetic slots with the category ids of the sample the slot holds this epoch), which is all that
    RepeatFactorTrainingSampler reads, without decoding every synthetic image at start.
    """

    def __init__(self, mix: SyntheticMixDataset, lut: np.ndarray | None, task: str) -> None:
        self.mix, self.lut, self.task = mix, lut, task

    def __len__(self) -> int:
        return len(self.mix)

    def __getitem__(self, index: int) -> dict:
        return self.mix[index]

    def __iter__(self) -> Iterator[dict]:
        for index in range(len(self.mix)):
            kind, j = self.mix.locate(index)
            yield self.mix.real[j] if kind == "real" else self._categories(j)

    def _categories(self, j: int) -> dict:
        assert self.mix.pool is not None
        rec = self.mix.pool.records[j]
        ids = [int(i["class_id"]) for i in rec.get("instances", [])]
        if self.lut is not None:
            ids = [int(self.lut[i]) for i in ids if self.lut[i] != IGNORE_INDEX]
        return {"annotations": [{"category_id": i, "iscrowd": 0} for i in ids], SYNTHETIC_KEY: str(rec.get("id"))}


class SyntheticSafeMapper:
    """Wraps the user's mapper. A synthetic item whose mapping raises is skipped (None: detectron2's MapDataset
    then maps another index), counted as corrupt_skipped and warned about by sample id; real items' errors
    propagate unchanged. Mapped synthetic items keep ``SYNTHETIC_KEY`` (the loader counts them by it)."""

    def __init__(self, mapper: Callable[[dict], Any], mix: SyntheticMixDataset) -> None:
        self.mapper, self.mix = mapper, mix

    def __call__(self, dataset_dict: Any) -> Any:
        sample_id = dataset_dict.get(SYNTHETIC_KEY) if isinstance(dataset_dict, dict) else None
        if sample_id is None:
            return self.mapper(dataset_dict)
        try:
            out = self.mapper(dataset_dict)
        except Exception as err:
            self.mix.state.counters[_proc_row()][COUNTERS.index("corrupt_skipped")] += 1
            log.warning(
                "synthaug: skipped synthetic sample %s: the mapper raised %s: %s", sample_id, type(err).__name__, err
            )
            return None
        finally:
            memory.drop(memory.paths_of(dataset_dict))
        if isinstance(out, dict):
            out[SYNTHETIC_KEY] = sample_id
        return out


def dataset_classes(names: Sequence[str], task: str) -> list[str]:
    """thing_classes (instance) or stuff_classes (sem_seg) of the real datasets, the same in all of them."""
    key = "thing_classes" if task == "instance" else "stuff_classes"
    for name in names:  # a COCO-format registration sets its classes when it is first loaded
        if not hasattr(MetadataCatalog.get(name), key) and name in DatasetCatalog.list():
            DatasetCatalog.get(name)
    try:
        check_metadata_consistency(key, list(names))  # detectron2's own multi-dataset check
        return list(getattr(MetadataCatalog.get(names[0]), key))
    except AttributeError:
        other = "sem_seg" if task == "instance" else "instance"
        hint = "stuff_classes" if task == "instance" else "thing_classes"
        hint = f"; it has {hint}: for that task set SYNTHAUG.TASK {other} (yacs) or task={other!r}" * any(
            hasattr(MetadataCatalog.get(n), hint) for n in names
        )
        raise ValueError(
            f"task {task!r} needs the real datasets' {key} to match the store's classes by name, but "
            f"MetadataCatalog.get({names[0]!r}) has none{hint}. Otherwise set {key} where you register the "
            f"dataset: MetadataCatalog.get({names[0]!r}).set({key}=[...])"
        ) from None
    except ValueError as err:
        raise ValueError(f"{err} The datasets {list(names)} must have the same {key} to mix into.") from None


def mix_augment(mix: dict[str, Any]) -> dict[str, Any]:
    if isinstance(mix.get("augment"), dict):
        mix["augment"] = MixAugment.from_dict(mix["augment"])
    return mix


def build_mix(
    real: str | Sequence[str],
    store: str,
    task: str = "instance",
    ratio: Any = 0.25,
    seed: int = 0,
    class_map: Mapping[str, str | int | None] | None = None,
    class_map_key: str = "class_map",
    mask_format: str = "polygon",
    real_dicts: Sequence[dict] | None = None,
    **mix: Any,
) -> MixAsDataset:
    """The mix of registered real dataset(s) (their dicts from detectron2's get_detection_dataset_dicts unless
    `real_dicts` is given) and a store, serving standard dataset dicts in the real datasets' class ids; as a
    torch Dataset whose `.mix` is the SyntheticMixDataset (counters, pool, plan)."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}: use one of {TASKS}")
    names = [real] if isinstance(real, str) else list(real)
    classes = dataset_classes(names, task)
    dicts = list(get_detection_dataset_dicts(names) if real_dicts is None else real_dicts)
    if mix.get("empty") == "wait":
        wait_for_store(store, float(mix.get("wait_timeout", 600.0)))
    opened = SampleStore(store)
    lut = match_classes(opened.vocabulary, classes, class_map, key=class_map_key, what=f"dataset {names[0]!r}")
    if task == "instance":
        check_instances(opened)
    ignore = int(getattr(MetadataCatalog.get(names[0]), "ignore_label", IGNORE_INDEX))
    transform = functools.partial(sample_to_dataset_dict, task=task, mask_format=mask_format, ignore_label=ignore)
    dataset = SyntheticMixDataset(
        dicts,
        store,
        ratio=ratio,
        seed=seed,
        real_classes=classes,
        class_map=class_map,
        class_map_key=class_map_key,
        synthetic_transform=transform,
        **mix_augment(mix),
    )
    return MixAsDataset(dataset, lut, task)


def register_mix(dataset: MixAsDataset, real: Sequence[str]) -> str:
    """Register the mix in DatasetCatalog under a fresh name, with the first real dataset's metadata (mappers
    and loaders look up MetadataCatalog.get(cfg.DATASETS.TRAIN[0]): ignore_label, classes...)."""
    n = 0
    while f"{real[0]}+synthaug{n}" in DatasetCatalog.list():
        n += 1
    name = f"{real[0]}+synthaug{n}"
    DatasetCatalog.register(name, lambda: dataset)
    meta = {k: v for k, v in MetadataCatalog.get(real[0]).as_dict().items() if k != "name"}
    MetadataCatalog.get(name).set(**meta, synthaug_real=list(real))
    return name


def load_sem_seg_gt(filename: str, copy: bool = True, dtype: Any = None) -> np.ndarray:
    """Class ids of a ground-truth mask, for SemSegEvaluator(sem_seg_loading_fn=...): detectron2's default
    passes copy=False to np.array, which numpy 2 refuses ("Unable to avoid copy while creating an array")."""
    from detectron2.utils.file_io import PathManager
    from PIL import Image

    with PathManager.open(filename, "rb") as f:
        return np.array(Image.open(f), dtype=dtype)


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
    class_map: Mapping[str, str | int | None] | None = None,
    sampler=None,
    aspect_ratio_grouping: bool = True,
    filter_empty: bool = True,
    vis_period: int = 0,
    log_period: int = 20,
    **mix: Any,
):
    """The LazyConfig drop-in for `dataloader.train`: detectron2's build_detection_train_loader over the mix,
    with your mapper (detectron2's DatasetMapper works), logging to EventStorage and, every `log_period`
    iterations, to the console; every `vis_period` iterations (0: never) a row of synthetic samples with
    their labels goes to EventStorage.put_image (TensorBoard).

    Synthetic masks are polygons unless ``mapper.instance_mask_format == 'bitmask'``. `register_coco`
    ("name=annotations.json=image_root" entries) registers real datasets first, for scripts such as
    lazyconfig_train_net.py that register nothing themselves.
    """
    from synthaug.integrations.detectron2.loader import SynthaugTrainLoader

    register_coco_entries(list(register_coco))
    names = [real] if isinstance(real, str) else list(real)
    dicts = get_detection_dataset_dicts(names, filter_empty=filter_empty)
    mask_format = getattr(mapper, "instance_mask_format", "polygon")
    dataset = build_mix(names, store, task, ratio, seed, class_map, "class_map", mask_format, real_dicts=dicts, **mix)
    loader = build_detection_train_loader(
        dataset,
        mapper=SyntheticSafeMapper(mapper, dataset.mix),
        sampler=sampler,
        total_batch_size=total_batch_size,
        num_workers=num_workers,
        aspect_ratio_grouping=aspect_ratio_grouping,
    )
    from synthaug.integrations.detectron2.loader import plan_samplers

    plan_samplers(loader, dataset.mix, total_batch_size)
    return SynthaugTrainLoader(
        loader,
        dataset.mix,
        refresh_interval,
        drive=True,
        log_period=log_period,
        vis_period=vis_period,
        image_format=image_format_of(mapper),
        images_per_iteration=total_batch_size,
    )


def image_format_of(mapper: Any, default: str = "BGR") -> str:
    """The channel order of the images a mapper makes (for the sample grid)."""
    return str(getattr(mapper, "image_format", default) or default)

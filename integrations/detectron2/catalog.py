"""Stores as detectron2 datasets: DatasetCatalog / MetadataCatalog registration and dataset dicts.

Call ``register_store`` inside the function that ``detectron2.engine.launch`` runs (the catalogs
are per-process globals, so a registration made before ``launch`` is missing in its workers).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from synthaug.integrations.detectron2 import memory

from synthaug.rle import decode as decode_rle
from synthaug.sample import Sample
from synthaug.store import SampleStore, UnsafeRecordError
from synthaug.vocabulary import IGNORE_INDEX, ClassVocabulary

TASKS = ("instance", "sem_seg")
#: The key of a synthetic dataset dict (and of its mapped dict) that holds the sample id.
SYNTHETIC_KEY = "synthaug"


def thing_ids(vocabulary: ClassVocabulary) -> list[int]:
    """Store class ids that are things (every class but the background), in detectron2's contiguous order."""
    bg = vocabulary.background
    return [i for i, n in enumerate(vocabulary.names) if n != bg]


def thing_classes(vocabulary: ClassVocabulary) -> list[str]:
    return [vocabulary.names[i] for i in thing_ids(vocabulary)]


def annotation(category_id: int, rle: dict, bbox: list[float], mask_format: str = "bitmask") -> dict | None:
    """One detectron2 annotation: XYWH box, RLE segmentation (or polygons unless mask_format is 'bitmask').

    None when polygons are asked for and the mask has no polygon of area > 0 (a speck of a pixel or two).
    """
    segmentation: Any = dict(rle)
    if mask_format != "bitmask":
        segmentation = rle_to_polygons(rle)
        if not segmentation:
            return None
    return {
        "bbox": [float(v) for v in bbox],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": int(category_id),
        "segmentation": segmentation,
        "iscrowd": 0,
    }


def rle_to_polygons(rle: dict) -> list[list[float]]:
    """COCO polygons (outer contours, pixel-corner coordinates as detectron2's GenericMask makes them)."""
    cv2 = import_cv2()
    mask = np.ascontiguousarray(decode_rle(rle), dtype=np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [
        (c.reshape(-1, 2).astype(np.float64) + 0.5).ravel().tolist()
        for c in contours
        if len(c) >= 3 and cv2.contourArea(c) > 0
    ]


def import_cv2():
    """OpenCV, which polygon masks need; the error says what to set instead."""
    try:
        import cv2
    except ImportError as err:
        raise ImportError(
            f"synthaug needs OpenCV (pip install opencv-python-headless) to give synthetic masks as polygons for "
            f"INPUT.MASK_FORMAT polygon (detectron2's default) ({err}); or set INPUT.MASK_FORMAT bitmask (yacs) / "
            "instance_mask_format='bitmask' on your DatasetMapper (LazyConfig)"
        ) from None
    return cv2


def instance_annotations(
    sample_instances: list[dict[str, Any]], vocabulary: ClassVocabulary, mask_format: str = "bitmask"
) -> list[dict]:
    """detectron2 annotations (XYWH boxes, RLE segmentation, contiguous category ids) from stored instances."""
    contiguous = {sid: k for k, sid in enumerate(thing_ids(vocabulary))}
    out = []
    for inst in sample_instances:
        if inst["class_id"] in contiguous:
            ann = annotation(contiguous[inst["class_id"]], inst["rle"], inst["bbox"], mask_format)
            out += [ann] if ann is not None else []
    return out


def check_instances(store: SampleStore) -> None:
    """Fail clearly if a store that holds samples has no instances, so it cannot serve an instance task."""
    if store.records and not any(r.get("instances") for r in store.records):
        raise ValueError(
            f"the store {store.root} has no instances, so it cannot train an instance task: use task='sem_seg', "
            "or regenerate it with instances (min_instance_area in gen.yaml) from an annotator that writes them"
        )


def store_dataset_dicts(store: str | Path, task: str = "instance", mask_format: str = "bitmask") -> list[dict]:
    """The store's samples as detectron2 dataset dicts (standard keys only); fails clearly if unusable.

    Instance masks are RLE, or polygons unless mask_format is 'bitmask' (set it as INPUT.MASK_FORMAT).
    sem_seg masks are the store's palette PNGs: read them with synthaug.imageio.read_mask, not detectron2's
    read_image(..., "L") (which turns palette colours into grey levels); the mix serves greyscale ones.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: use one of {TASKS}")
    s = SampleStore(store)
    if task == "instance":
        check_instances(s)
    dicts = []
    for rec in s.records:
        try:  # every file checked to stay inside the store (symbolic links resolved) before it is named
            image, mask = s.path_of(rec, "image"), s.path_of(rec, "mask")
        except UnsafeRecordError as err:
            logging.getLogger(__name__).warning("synthaug: skipped %s", err)
            continue
        d: dict[str, Any] = {
            "file_name": image,
            "height": rec["height"],
            "width": rec["width"],
            "image_id": rec["id"],
        }
        if task == "instance":
            d["annotations"] = instance_annotations(rec.get("instances", []), s.vocabulary, mask_format)
        else:
            d["sem_seg_file_name"] = mask
        dicts.append(d)
    return dicts


def register_store(name: str, store_path: str | Path, task: str = "instance", mask_format: str = "bitmask") -> str:
    """Register `store_path` as detectron2 dataset `name`; calling it again with the same arguments is a no-op.

    Instance stores give thing_classes (every class but the background); sem_seg stores give
    stuff_classes (all classes) and ignore_label 255. Call it inside the function `launch()` runs.
    """
    store_path = Path(store_path).resolve()
    if task not in TASKS:
        raise ValueError(f"task={task!r}: use one of {TASKS}")
    opened = SampleStore(store_path)
    vocabulary = opened.vocabulary
    if task == "instance":
        check_instances(opened)  # fail now, at start
    meta = MetadataCatalog.get(name)
    if name in DatasetCatalog.list():
        if getattr(meta, "synthaug_store", None) == str(store_path) and getattr(meta, "synthaug_task", None) == task:
            return name
        raise ValueError(
            f"dataset {name!r} is already registered (store {getattr(meta, 'synthaug_store', '?')}, task "
            f"{getattr(meta, 'synthaug_task', '?')}); pick another name"
        )
    DatasetCatalog.register(name, lambda: store_dataset_dicts(store_path, task, mask_format))
    extra: dict[str, Any] = {"synthaug_store": str(store_path), "synthaug_task": task, "ignore_label": IGNORE_INDEX}
    if task == "instance":
        extra.update(thing_classes=thing_classes(vocabulary), evaluator_type="coco")
    else:
        extra.update(
            stuff_classes=list(vocabulary.names),
            stuff_colors=[list(c) for c in vocabulary.palette],
            evaluator_type="sem_seg",
        )
    meta.set(**extra)
    return name


def sample_to_dataset_dict(
    sample: Sample, task: str = "instance", mask_format: str = "bitmask", ignore_label: int = IGNORE_INDEX
) -> dict:
    """A served synthetic sample (class ids already in the real dataset's space) as a STANDARD dataset dict.

    Its image (and sem_seg mask) are in-memory files (see memory.py) that any mapper reads through
    detectron2's read_image; category ids are the mapped instance class ids. ``SYNTHETIC_KEY`` holds the
    sample id: the mapper wrapper and the loader count synthetic items by it.
    """
    h, w = sample.mask.shape
    d: dict[str, Any] = {
        "file_name": memory.put(sample.image, "image"),
        "height": h,
        "width": w,
        "image_id": f"synthaug:{sample.id}",
        SYNTHETIC_KEY: str(sample.id),
    }
    if task == "instance":
        anns = (annotation(i.class_id, dict(i.rle), i.bbox, mask_format) for i in sample.instances)
        d["annotations"] = [a for a in anns if a is not None]
    else:
        mask = sample.mask
        if ignore_label != IGNORE_INDEX:
            mask = np.where(mask == IGNORE_INDEX, ignore_label, mask).astype(np.uint8)
        d["sem_seg_file_name"] = memory.put(mask, "sem_seg")
    return d


def register_coco_entries(entries: list[str]) -> None:
    """Register COCO-format datasets given as "name=annotations.json=image_root"; already registered names are kept."""
    from detectron2.data.datasets import register_coco_instances

    for entry in entries:
        parts = entry.split("=")
        if len(parts) != 3:
            raise ValueError(f"COCO dataset entry {entry!r}: write it as name=annotations.json=image_root")
        name, json_file, image_root = parts
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, json_file, image_root)

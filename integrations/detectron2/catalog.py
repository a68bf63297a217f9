"""Stores as detectron2 datasets: DatasetCatalog / MetadataCatalog registration and dataset dicts.

Call ``register_store`` inside the function that ``detectron2.engine.launch`` runs (the catalogs
are per-process globals, so a registration made before ``launch`` is missing in its workers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from synthaug.sample import Sample
from synthaug.store import SampleStore
from synthaug.vocabulary import IGNORE_INDEX, ClassVocabulary

TASKS = ("instance", "sem_seg")


def thing_ids(vocabulary: ClassVocabulary) -> list[int]:
    """Store class ids that are things (every class but the background), in detectron2's contiguous order."""
    bg = vocabulary.background
    return [i for i, n in enumerate(vocabulary.names) if n != bg]


def thing_classes(vocabulary: ClassVocabulary) -> list[str]:
    return [vocabulary.names[i] for i in thing_ids(vocabulary)]


def instance_annotations(sample_instances: list[dict[str, Any]], vocabulary: ClassVocabulary) -> list[dict]:
    """detectron2 annotations (XYWH boxes, RLE segmentation, contiguous category ids) from stored instances."""
    contiguous = {sid: k for k, sid in enumerate(thing_ids(vocabulary))}
    out = []
    for inst in sample_instances:
        if inst["class_id"] not in contiguous:
            continue
        rle = dict(inst["rle"])
        out.append(
            {
                "bbox": list(inst["bbox"]),
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": contiguous[inst["class_id"]],
                "segmentation": rle,
                "iscrowd": 0,
            }
        )
    return out


def check_instances(store: SampleStore) -> None:
    """Fail clearly if a store that holds samples has no instances, so it cannot serve an instance task."""
    if store.records and not any(r.get("instances") for r in store.records):
        raise ValueError(
            f"the store {store.root} has no instances, so it cannot train an instance task: use task='sem_seg', "
            "or regenerate it with instances (min_instance_area in gen.yaml) from an annotator that writes them"
        )


def store_dataset_dicts(store: str | Path, task: str = "instance") -> list[dict]:
    """The store's samples as detectron2 dataset dicts (standard keys only); fails clearly if unusable."""
    if task not in TASKS:
        raise ValueError(f"task={task!r}: use one of {TASKS}")
    s = SampleStore(store)
    if task == "instance":
        check_instances(s)
    dicts = []
    for rec in s.records:
        d: dict[str, Any] = {
            "file_name": str(s.root / rec["image"]),
            "height": rec["height"],
            "width": rec["width"],
            "image_id": rec["id"],
        }
        if task == "instance":
            d["annotations"] = instance_annotations(rec.get("instances", []), s.vocabulary)
        else:
            d["sem_seg_file_name"] = str(s.root / rec["mask"])
        dicts.append(d)
    return dicts


def register_store(name: str, store_path: str | Path, task: str = "instance") -> str:
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
    DatasetCatalog.register(name, lambda: store_dataset_dicts(store_path, task))
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


def sample_to_dataset_dict(sample: Sample, vocabulary: ClassVocabulary, task: str) -> dict:
    """An in-memory synthetic sample (after splice/blur) as a dataset dict carrying its arrays."""
    h, w = sample.mask.shape
    d: dict[str, Any] = {"image_array": sample.image, "height": h, "width": w, "image_id": sample.id, "synthetic": True}
    if task == "instance":
        d["annotations"] = instance_annotations([i.to_dict() for i in sample.instances], vocabulary)
    else:
        d["sem_seg_array"] = sample.mask
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

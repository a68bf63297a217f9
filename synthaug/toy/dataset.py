"""A toy "real" dataset on disk: mmseg's folder layout and COCO instance JSON, with train/val/test splits.

    root/
      img_dir/{train,val,test}/toy_000123.png      RGB images
      ann_dir/{train,val,test}/toy_000123.png      palette PNG masks, pixel = class id
      inst_dir/{train,val,test}/toy_000123.png     greyscale PNG, pixel = object number (0 = none)
      annotations/instances_{split}.json           COCO, segmentation as compressed RLE
      dataset.json                                 class vocabulary, split sizes and seeds

Each split draws its scenes from its own seed range, so splits never share an image.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from synthaug import rle
from synthaug.imageio import mask_to_png
from synthaug.toy.world import TOY_VOCABULARY, render_seed

SPLIT_SEED_STRIDE = 1_000_000
DEFAULT_SPLITS: Mapping[str, int] = {"train": 200, "val": 50, "test": 100}


def split_seed(split_index: int, index: int, seed: int) -> int:
    return seed * 10 * SPLIT_SEED_STRIDE + (split_index + 1) * SPLIT_SEED_STRIDE + index


def write_toy_dataset(
    root: str | Path,
    splits: Mapping[str, int] = DEFAULT_SPLITS,
    size: int = 32,
    seed: int = 0,
) -> dict[str, Any]:
    """Render the splits into `root`; returns (and writes as dataset.json) a summary of what was made."""
    root = Path(root)
    vocab = TOY_VOCABULARY
    categories = [{"id": i, "name": n} for i, n in enumerate(vocab.names) if i in vocab.foreground_ids]
    summary: dict[str, Any] = {"vocabulary": vocab.to_dict(), "size": size, "seed": seed, "splits": {}}
    for s_idx, (split, count) in enumerate(splits.items()):
        img_dir = root / "img_dir" / split
        ann_dir = root / "ann_dir" / split
        inst_dir = root / "inst_dir" / split
        for folder in (img_dir, ann_dir, inst_dir):
            folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            scene_seed = split_seed(s_idx, i, seed)
            r = render_seed(scene_seed, size=size)
            name = f"toy_{scene_seed:09d}"
            Image.fromarray(r.image).save(img_dir / f"{name}.png")
            mask_to_png(r.semantic, vocab.palette).save(ann_dir / f"{name}.png")
            ids = np.zeros(r.semantic.shape, np.uint8)
            for k, inst in enumerate(r.instances, 1):
                ids[inst] = k
            Image.fromarray(ids, mode="L").save(inst_dir / f"{name}.png")
            image_id = len(images) + 1
            images.append(
                {
                    "id": image_id,
                    "file_name": f"{split}/{name}.png",
                    "height": size,
                    "width": size,
                    "caption": r.scene.caption,
                    "seed": scene_seed,
                }
            )
            for inst, cls in zip(r.instances, r.instance_classes):
                if not inst.any():
                    continue
                enc = rle.encode(inst)
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": cls,
                        "segmentation": enc,
                        "area": int(inst.sum()),
                        "bbox": rle.bbox(inst),
                        "iscrowd": 0,
                    }
                )
        ann_file = root / "annotations" / f"instances_{split}.json"
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
        summary["splits"][split] = {"count": count, "seed_start": split_seed(s_idx, 0, seed)}
    (root / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

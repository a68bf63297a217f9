"""The toy 'real' dataset on disk: mmseg folders and COCO JSON that agree with the renderer."""

from __future__ import annotations

import json

import numpy as np

from synthaug import rle
from synthaug.imageio import read_image, read_mask
from synthaug.toy.dataset import write_toy_dataset
from synthaug.toy.world import TOY_VOCABULARY, render_seed


def test_layout_and_contents(tmp_path):
    summary = write_toy_dataset(tmp_path, {"train": 6, "val": 3, "test": 2}, size=48, seed=3)
    assert summary["vocabulary"]["names"] == list(TOY_VOCABULARY.names)
    names = {}
    for split, count in (("train", 6), ("val", 3), ("test", 2)):
        imgs = sorted((tmp_path / "img_dir" / split).glob("*.png"))
        anns = sorted((tmp_path / "ann_dir" / split).glob("*.png"))
        assert len(imgs) == len(anns) == count
        assert [p.name for p in imgs] == [p.name for p in anns]
        names[split] = {p.name for p in imgs}
        coco = json.loads((tmp_path / "annotations" / f"instances_{split}.json").read_text())
        assert [c["name"] for c in coco["categories"]] == ["circle", "square", "triangle"]
        for image in coco["images"]:
            r = render_seed(image["seed"], 48)
            stem = image["file_name"].split("/")[-1]
            assert np.array_equal(read_image(tmp_path / "img_dir" / split / stem), r.image)
            assert np.array_equal(read_mask(tmp_path / "ann_dir" / split / stem), r.semantic)
            ids = read_mask(tmp_path / "inst_dir" / split / stem)  # object k (1-based) where it is visible
            assert all(np.array_equal(ids == k, inst) for k, inst in enumerate(r.instances, 1))
            anns_here = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
            assert len(anns_here) == len(r.scene.objects)
            for a, inst in zip(anns_here, r.instances):
                assert np.array_equal(rle.decode(a["segmentation"]), inst)
                assert a["area"] == int(inst.sum()) and a["bbox"] == rle.bbox(inst)
    assert not (names["train"] & names["val"]) and not (names["train"] & names["test"])

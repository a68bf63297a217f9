"""A test hook for mmseg runs: writes the label values of every item of every training batch to a file."""

from __future__ import annotations

import json
import os

from mmengine.hooks import Hook
from mmseg.registry import HOOKS


@HOOKS.register_module()
class LabelProbe(Hook):
    """Appends {"synthetic", "values", "shape"} per batch item to WORK_DIR/label_probe.jsonl."""

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        with open(os.path.join(runner.work_dir, "label_probe.jsonl"), "a") as f:
            for sample in data_batch["data_samples"]:
                labels = sample.gt_sem_seg.data
                row = {
                    "synthetic": str(sample.metainfo.get("img_path", "")).startswith("synthaug:"),
                    "values": sorted(int(v) for v in labels.unique()),
                    "shape": list(labels.shape[-2:]),
                }
                f.write(json.dumps(row) + "\n")


@HOOKS.register_module()
class ServedProbe(Hook):
    """Appends {"iter", "ids"} per iteration to WORK_DIR/served_probe.jsonl: the img_path of every item trained on."""

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        with open(os.path.join(runner.work_dir, "served_probe.jsonl"), "a") as f:
            ids = [str(s.metainfo.get("img_path", "")) for s in data_batch["data_samples"]]
            f.write(json.dumps({"iter": runner.iter, "ids": ids}) + "\n")


@HOOKS.register_module()
class StoreGrower(Hook):
    """A stand-in producer: after iteration `at`, adds `count` toy samples to `store` (a segment of its own)."""

    def __init__(self, store: str, at: int, count: int = 16) -> None:
        self.store, self.at, self.count = store, at, count

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.at:
            grow(self.store, self.count)


def grow(store: str, count: int) -> None:
    """The samples a producer adds: the same ones whoever calls it."""
    from synthaug.store import StoreWriter
    from synthaug.toy.world import render_seed

    with StoreWriter(store, "grown", fsync=False) as w:
        for seed in range(500, 500 + count):
            w.add(render_seed(seed, 32).to_sample())

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

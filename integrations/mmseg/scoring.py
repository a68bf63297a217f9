"""The per-pixel loss of an mmseg model on synthetic samples, for `synthaug score` (see synthaug.scoring).

The model is built with mmseg's own `init_model` from a config and checkpoint, and run with
`inference_model`, so the config's test pipeline and data preprocessor (resize, normalisation) apply
as they do at test time; mmseg returns the logits at the input's size, and the loss is the
cross-entropy of the sample's mask under them, per pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import synthaug.integrations.mmseg  # noqa: F401  (mmcv-lite ops, checkpoint loading)
import torch
import torch.nn.functional as F

from synthaug.sample import Sample
from synthaug.vocabulary import IGNORE_INDEX


class MMSegLossModel:
    """An mmseg segmentor from `config` and `checkpoint`, giving per-pixel cross-entropy (synthaug.scoring.LossModel)."""

    task = "sem_seg"

    def __init__(self, config: str | Path, checkpoint: str | Path, device: str = "cpu") -> None:
        from mmseg.apis import init_model

        for what, path in (("config", config), ("checkpoint", checkpoint)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"the {what} {path} does not exist")
        self.model = init_model(str(config), str(checkpoint), device=device)
        meta = getattr(self.model, "dataset_meta", None) or {}
        if "classes" not in meta:
            raise ValueError(f"{checkpoint} names no classes (dataset_meta): score with a checkpoint mmseg trained")
        self.classes = list(meta["classes"])
        self.name = str(Path(checkpoint).resolve())

    def pixel_loss(self, samples: list[Sample]) -> list[np.ndarray]:
        from mmseg.apis import inference_model

        if not samples:
            return []
        results = inference_model(self.model, [np.ascontiguousarray(s.image[..., ::-1]) for s in samples])
        out = []
        for sample, result in zip(samples, results):
            logits = result.seg_logits.data.float().cpu()
            if logits.shape[0] == 1:
                raise ValueError("the model has one output channel (a sigmoid head): scoring needs a softmax head")
            if tuple(logits.shape[1:]) != sample.mask.shape:
                raise ValueError(
                    f"the model gave logits of {tuple(logits.shape[1:])} for a mask of {sample.mask.shape}"
                )
            target = torch.from_numpy(sample.mask.astype(np.int64))
            loss = F.cross_entropy(logits[None], target[None], ignore_index=IGNORE_INDEX, reduction="none")[0]
            out.append(loss.numpy())
        return out

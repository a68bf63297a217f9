"""The loss of a detectron2 model on synthetic samples, for `synthaug score` and live scoring (synthaug.scoring).

Instance models (a ROI head with a mask head, e.g. Mask R-CNN): each synthetic instance's loss is Mask R-CNN's
mask loss for it: the binary cross-entropy between the mask head's prediction for the instance's own box and
class (detectron2's `forward_with_given_boxes`) and its mask cropped to that box at the head's resolution, as
`mask_rcnn_loss` computes it in training. Every pixel of the instance carries that loss, so the class-wise
rule ignores whole instances (and the mix drops an instance most of whose pixels are ignored); an instance's
loss counts once per pixel it covers. Pixels outside every instance carry no loss, and the store's background,
which an instance model has no class for, is not scored.

Semantic models (`SemanticSegmentor`): the per-pixel cross-entropy of the logits at the sample's size.

The model is built from the training config with detectron2's own `build_model` and loaded with
`DetectionCheckpointer`; images go through the config's test resize and the model's own normalisation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from synthaug import rle
from synthaug.sample import Sample
from synthaug.vocabulary import IGNORE_INDEX


def load_config(config: str | Path):
    """The yacs config of a training run (its config file, or the config.yaml detectron2 saves in OUTPUT_DIR).

    Keys this detectron2 does not know (a project's own, e.g. Mask2Former's) are accepted: scoring reads only
    the model, input and dataset keys."""
    from detectron2.config import get_cfg
    from synthaug.integrations.detectron2.engine import add_synthaug_config

    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"the config {path} does not exist")
    if path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"{path}: scoring with detectron2 reads a yacs .yaml config (the one train_net.py takes)")
    cfg = add_synthaug_config(get_cfg())
    cfg.set_new_allowed(True)
    cfg.merge_from_file(str(path))
    return cfg


def model_classes(cfg, task: str) -> list[str]:
    """The class names of the run's training datasets (thing_classes or stuff_classes), registered as the
    training run registers them (SYNTHAUG.REGISTER_COCO)."""
    from synthaug.integrations.detectron2.data import dataset_classes
    from synthaug.integrations.detectron2.engine import register_from_cfg

    register_from_cfg(cfg)
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("the config's DATASETS.TRAIN is empty: give the model's classes (--classes a,b,c)")
    try:
        return dataset_classes(names, task)
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"cannot tell the model's classes from DATASETS.TRAIN {names} in this process ({err}); give them: "
            "synthaug score --classes a,b,c (the live producer gets them from the training run)"
        ) from None


class Detectron2LossModel:
    """A detectron2 model from a yacs config and a checkpoint, giving each sample's loss (synthaug.scoring.LossModel)."""

    def __init__(
        self, config: str | Path, checkpoint: str | Path, device: str = "cpu", classes: Sequence[str] | None = None
    ) -> None:
        from detectron2.modeling import build_model

        if not Path(checkpoint).is_file():
            raise FileNotFoundError(f"the checkpoint {checkpoint} does not exist")
        cfg = load_config(config)
        cfg.defrost()
        cfg.MODEL.DEVICE = device
        cfg.MODEL.WEIGHTS = ""
        semantic = cfg.MODEL.META_ARCHITECTURE == "SemanticSegmentor"
        if not semantic and not cfg.MODEL.MASK_ON:
            raise ValueError(
                f"{config}: MODEL.MASK_ON is off and {cfg.MODEL.META_ARCHITECTURE} is not a SemanticSegmentor: "
                "scoring needs a mask head (instance) or a semantic head"
            )
        self.task = "sem_seg" if semantic else "instance"
        self.classes = list(classes) if classes else model_classes(cfg, self.task)
        key = "MODEL.SEM_SEG_HEAD.NUM_CLASSES" if semantic else "MODEL.ROI_HEADS.NUM_CLASSES"
        heads = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES if semantic else cfg.MODEL.ROI_HEADS.NUM_CLASSES
        if len(self.classes) != heads:
            raise ValueError(
                f"{len(self.classes)} classes {self.classes} for a model whose {key} is {heads}: give the classes "
                "the checkpoint was trained on, in its ids"
            )
        self.model = build_model(cfg).eval()
        load_exactly(self.model, checkpoint)
        self.name = str(Path(checkpoint).resolve())
        self.format = cfg.INPUT.FORMAT
        from detectron2.data import transforms as T

        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)

    def _input(self, sample: Sample):
        image = sample.image[..., ::-1] if self.format == "BGR" else sample.image
        tfm = self.resize.get_transform(image)
        resized = tfm.apply_image(np.ascontiguousarray(image))
        h, w = sample.mask.shape
        return {"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()), "height": h, "width": w}, tfm

    @torch.no_grad()
    def pixel_loss(self, samples: list[Sample]) -> list[np.ndarray]:
        return [self._semantic(s) if self.task == "sem_seg" else self._instances(s) for s in samples]

    def _semantic(self, sample: Sample) -> np.ndarray:
        inputs, _ = self._input(sample)
        logits = self.model([inputs])[0]["sem_seg"].float().cpu()
        if tuple(logits.shape[1:]) != sample.mask.shape:
            raise ValueError(f"the model gave logits of {tuple(logits.shape[1:])} for a mask of {sample.mask.shape}")
        target = torch.from_numpy(sample.mask.astype(np.int64))
        return F.cross_entropy(logits[None], target[None], ignore_index=IGNORE_INDEX, reduction="none")[0].numpy()

    def _instances(self, sample: Sample) -> np.ndarray:
        from detectron2.structures import BitMasks, Boxes, Instances

        loss = np.full(sample.mask.shape, np.nan, np.float32)  # NaN: not scored (outside every instance)
        if not sample.instances:
            return loss
        masks = np.stack([rle.decode(i.rle) for i in sample.instances]).astype(bool)
        bitmasks = BitMasks(torch.from_numpy(masks))
        boxes = bitmasks.get_bounding_boxes().tensor.numpy()  # XYXY, pixel edges
        inputs, tfm = self._input(sample)
        model = self.model
        images = model.preprocess_image([inputs])
        features = model.backbone(images.tensor)
        given = Instances(images.image_sizes[0])
        given.pred_boxes = Boxes(torch.as_tensor(tfm.apply_box(boxes), dtype=torch.float32, device=model.device))
        given.pred_classes = torch.as_tensor([i.class_id for i in sample.instances], device=model.device)
        predicted = model.roi_heads.forward_with_given_boxes(features, [given])[0].pred_masks[:, 0].float().cpu()
        side = predicted.shape[-1]
        target = bitmasks.crop_and_resize(torch.from_numpy(boxes), side).float()
        # mask_rcnn_inference gives probabilities; this is mask_rcnn_loss's binary cross-entropy, per instance
        per_instance = F.binary_cross_entropy(predicted.clamp(1e-6, 1 - 1e-6), target, reduction="none").mean((1, 2))
        for pixels, value in zip(masks, per_instance.tolist()):
            loss[pixels] = np.fmax(loss[pixels], value)  # an overlap carries the larger loss
        return loss


def load_exactly(model: torch.nn.Module, checkpoint: str | Path) -> None:
    """Load `checkpoint` with detectron2's checkpointer, refusing one that does not fit the model: detectron2 only
    warns and keeps the random weights of a head whose shape differs (a checkpoint of other classes)."""
    from detectron2.checkpoint import DetectionCheckpointer

    found = []

    class Recording(DetectionCheckpointer):
        def _log_incompatible_keys(self, incompatible) -> None:
            found.append(incompatible)
            super()._log_incompatible_keys(incompatible)

    Recording(model).load(str(checkpoint))
    bad = found[0] if found else None
    if bad is not None and (bad.incorrect_shapes or bad.missing_keys):
        shapes = [f"{k} {tuple(a)} in the checkpoint, {tuple(b)} in the model" for k, a, b in bad.incorrect_shapes]
        raise ValueError(
            f"the checkpoint {checkpoint} does not fit the config's model: "
            + "; ".join(shapes[:4] + [f"missing {bad.missing_keys[:6]}"] * bool(bad.missing_keys))
            + ". Score with the config the checkpoint was trained with (its classes and heads)"
        )

#!/usr/bin/env python3
"""Mask2Former's training script for detectron2 (the parts that train), plus the lines marked "synthaug".

    python tools/mask2former_train_net.py --config-file configs/detectron2/mask2former_R50_ade20k_semantic_mix.yaml \
        SYNTHAUG.STORE data/my_store SYNTHAUG.RATIO 0.3

As in Mask2Former's own train_net.py: the train mapper is the one INPUT.DATASET_MAPPER_NAME names
(detectron2's default for another name), AdamW or SGD with the backbone at SOLVER.BACKBONE_MULTIPLIER and
no weight decay on norms and embeddings, full-model gradient clipping (SOLVER.CLIP_GRADIENTS.NORM_TYPE is
honoured; Mask2Former's script always takes the 2-norm), DeepLab's LR schedulers (WarmupPolyLR among
them), and semantic and instance evaluators (sem_seg, cityscapes_sem_seg, coco, cityscapes_instance). If you keep your copy of Mask2Former's script, add the two synthaug lines
to it: `add_synthaug_config(cfg)` in setup() and `@with_synthaug` on its Trainer (plus
`import_mask2former()` on a machine without the compiled ops).
"""

from __future__ import annotations

import itertools
import logging
import os

import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog, build_detection_train_loader
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import (
    CityscapesInstanceEvaluator,
    CityscapesSemSegEvaluator,
    COCOEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.projects.deeplab import add_deeplab_config, build_lr_scheduler
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from synthaug.integrations.detectron2 import add_synthaug_config, load_sem_seg_gt, with_synthaug
from synthaug.integrations.detectron2.mask2former import import_mask2former, log_stand_ins

mask2former = import_mask2former()  # synthaug: Mask2Former without compiled ops, each stand-in logged

MAPPERS = {
    "mask_former_semantic": mask2former.MaskFormerSemanticDatasetMapper,
    "mask_former_instance": mask2former.MaskFormerInstanceDatasetMapper,
    "mask_former_panoptic": mask2former.MaskFormerPanopticDatasetMapper,
    "coco_instance_lsj": mask2former.COCOInstanceNewBaselineDatasetMapper,
    "coco_panoptic_lsj": mask2former.COCOPanopticNewBaselineDatasetMapper,
}
NORMS = (
    torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm, torch.nn.GroupNorm,
    torch.nn.InstanceNorm1d, torch.nn.InstanceNorm2d, torch.nn.InstanceNorm3d, torch.nn.LayerNorm,
    torch.nn.LocalResponseNorm,
)  # fmt: skip


@with_synthaug  # synthaug: train on the mix when SYNTHAUG.STORE is set
class Trainer(DefaultTrainer):
    @classmethod
    def build_train_loader(cls, cfg):
        name = cfg.INPUT.DATASET_MAPPER_NAME
        if name not in MAPPERS:  # as Mask2Former's script: detectron2's default mapper
            return super().build_train_loader(cfg)
        return build_detection_train_loader(cfg, mapper=MAPPERS[name](cfg, True))

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)  # DeepLab's: WarmupPolyLR among them

    @classmethod
    def build_optimizer(cls, cfg, model):
        s = cfg.SOLVER
        groups, seen = [], set()
        for module_name, module in model.named_modules():
            for name, value in module.named_parameters(recurse=False):
                if not value.requires_grad or value in seen:
                    continue
                seen.add(value)
                group = {"params": [value], "lr": s.BASE_LR, "weight_decay": s.WEIGHT_DECAY}
                if "backbone" in module_name:
                    group["lr"] = s.BASE_LR * s.BACKBONE_MULTIPLIER
                if "relative_position_bias_table" in name or "absolute_pos_embed" in name:
                    group["weight_decay"] = 0.0
                if isinstance(module, NORMS):
                    group["weight_decay"] = s.WEIGHT_DECAY_NORM
                if isinstance(module, torch.nn.Embedding):
                    group["weight_decay"] = s.WEIGHT_DECAY_EMBED
                groups.append(group)
        kind = s.OPTIMIZER
        if kind == "SGD":
            optimizer_cls, kwargs = torch.optim.SGD, {"momentum": s.MOMENTUM}
        elif kind == "ADAMW":
            optimizer_cls, kwargs = torch.optim.AdamW, {}
        else:
            raise ValueError(f"SOLVER.OPTIMIZER {kind!r}: Mask2Former's script knows SGD and ADAMW")
        clip = s.CLIP_GRADIENTS
        # one norm over every parameter, as Mask2Former clips; a CLIP_VALUE <= 0 turns it off, as there
        if clip.ENABLED and clip.CLIP_TYPE == "full_model" and clip.CLIP_VALUE > 0:
            optimizer_cls = full_model_clipping(optimizer_cls, clip.CLIP_VALUE, clip.NORM_TYPE)
        optimizer = optimizer_cls(groups, s.BASE_LR, **kwargs)
        if not (clip.ENABLED and clip.CLIP_TYPE == "full_model"):
            optimizer = maybe_add_gradient_clipping(cfg, optimizer)
        return optimizer

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """Semantic (`sem_seg`, `cityscapes_sem_seg`) and instance (`coco`, `cityscapes_instance`) evaluation;
        the panoptic types are left to Mask2Former's own script (synthaug trains semantic and instance tasks)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "sem_seg")
        if kind == "sem_seg":
            # load_sem_seg_gt: detectron2's default GT loader fails under numpy 2 (np.array(copy=False))
            return DatasetEvaluators(
                [
                    SemSegEvaluator(
                        dataset_name, distributed=True, output_dir=output_folder, sem_seg_loading_fn=load_sem_seg_gt
                    )
                ]
            )
        if kind == "coco":
            return DatasetEvaluators([COCOEvaluator(dataset_name, output_dir=output_folder)])
        if kind == "cityscapes_sem_seg":
            return CityscapesSemSegEvaluator(dataset_name)
        if kind == "cityscapes_instance":
            return CityscapesInstanceEvaluator(dataset_name)
        raise NotImplementedError(f"no evaluator here for {dataset_name} (evaluator_type {kind!r})")


def full_model_clipping(optimizer_cls, value: float, norm_type: float):
    """`optimizer_cls` whose step first clips the gradient norm of all its parameters together."""

    class FullModelClipping(optimizer_cls):
        def step(self, closure=None):
            params = itertools.chain(*(g["params"] for g in self.param_groups))
            torch.nn.utils.clip_grad_norm_(params, value, norm_type)
            return super().step(closure=closure)

    FullModelClipping.__name__ = f"{optimizer_cls.__name__}WithFullModelClipping"
    return FullModelClipping


def setup(args):
    cfg = get_cfg()
    add_deeplab_config(cfg)
    mask2former.add_maskformer2_config(cfg)
    add_synthaug_config(cfg)  # synthaug: the SYNTHAUG.* keys
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="mask2former")
    log_stand_ins(logging.getLogger("detectron2"))  # synthaug: what import_mask2former() stood in for, to log.txt
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        from detectron2.checkpoint import DetectionCheckpointer

        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )

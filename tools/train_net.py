#!/usr/bin/env python3
"""detectron2's standard training script, plus the two lines marked "synthaug".

    python tools/train_net.py --config-file configs/detectron2/toy_mask_rcnn_mix.yaml SYNTHAUG.RATIO 0.3

Run it as a script (as above), not as `python -m tools.train_net`: the detectron2 wheel installs
a top-level `tools` package of its own, which `-m` would pick.
"""

from __future__ import annotations

import os

from detectron2.config import get_cfg
from detectron2.engine import DefaultTrainer, default_argument_parser, default_setup, launch
from detectron2.evaluation import COCOEvaluator, DatasetEvaluators, SemSegEvaluator
from synthaug.integrations.detectron2 import add_synthaug_config, load_sem_seg_gt, with_synthaug


@with_synthaug  # synthaug: train on the mix when SYNTHAUG.STORE is set
class Trainer(DefaultTrainer):
    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        from detectron2.data import MetadataCatalog

        kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
        if kind == "sem_seg":
            # load_sem_seg_gt: detectron2's default GT loader fails under numpy 2 (np.array(copy=False))
            evaluator = SemSegEvaluator(
                dataset_name, distributed=True, output_dir=output_folder, sem_seg_loading_fn=load_sem_seg_gt
            )
            return DatasetEvaluators([evaluator])
        return DatasetEvaluators([COCOEvaluator(dataset_name, output_dir=output_folder)])


def setup(args):
    cfg = get_cfg()
    add_synthaug_config(cfg)  # synthaug: the SYNTHAUG.* keys
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        from detectron2.checkpoint import DetectionCheckpointer

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

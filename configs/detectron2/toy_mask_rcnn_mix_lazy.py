# LazyConfig for detectron2's lazyconfig_train_net.py: the toy Mask R-CNN of toy_mask_rcnn_real.yaml,
# with `dataloader.train` replaced by synthaug's drop-in (the lines marked "synthaug").
#   python .venv/lib/python3.11/site-packages/tools/lazyconfig_train_net.py \
#       --config-file configs/detectron2/toy_mask_rcnn_mix_lazy.py
from pathlib import Path

from detectron2.config import LazyCall as L
from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.solver import get_default_optimizer_params
from fvcore.common.param_scheduler import CosineParamScheduler
from synthaug.integrations.detectron2 import SynthaugBlur, build_synthaug_train_loader
from torch.optim import SGD


def toy_model_cfg():
    """The yacs config of the toy Mask R-CNN, reused for the model."""
    from synthaug.integrations.detectron2 import add_synthaug_config

    cfg = add_synthaug_config(get_cfg())
    cfg.merge_from_file(str(Path(__file__).with_name("toy_mask_rcnn_real.yaml")))
    return cfg


model = L(build_model)(cfg=L(toy_model_cfg)())

dataloader = dict(
    train=L(build_synthaug_train_loader)(  # synthaug: the mix instead of build_detection_train_loader
        real="toy_train",
        store="data/toy_store",
        ratio=0.5,
        register_coco=["toy_train=data/toy/annotations/instances_train.json=data/toy/img_dir"],
        mapper=L(DatasetMapper)(  # detectron2's own mapper reads synthetic items too
            is_train=True,
            augmentations=[
                L(T.ResizeShortestEdge)(short_edge_length=(64,), max_size=128, sample_style="choice"),
                L(T.RandomFlip)(),
                L(SynthaugBlur)(p_gaussian=0.2, p_edge=0.2),
            ],
            image_format="BGR",
            use_instance_mask=True,
            instance_mask_format="bitmask",  # the toy COCO JSON holds RLE masks; "polygon" works for synthetic ones
        ),
        total_batch_size=4,
        augment=dict(splice=dict(p_grid=0.2), blur=None),
    )
)

optimizer = L(SGD)(params=L(get_default_optimizer_params)(), lr=0.002, momentum=0.9, weight_decay=1e-4)
lr_multiplier = L(CosineParamScheduler)(start_value=1.0, end_value=0.1)  # where = iteration / max_iter
train = dict(
    output_dir="work_dirs/toy_mask_rcnn_mix_lazy",
    init_checkpoint="",
    max_iter=200,
    amp=dict(enabled=False),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    checkpointer=dict(period=100000, max_to_keep=1),
    eval_period=0,
    log_period=10,
    device="cpu",
)

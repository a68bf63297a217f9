# COCO instance segmentation with detectron2's own new-baseline Mask R-CNN, plus synthetic samples.
# The store's classes are matched to COCO's 80 thing classes by name (case, '_' and '-' aside; a background
# class is ignored); name the others in class_map. detectron2's own DatasetMapper reads synthetic items, with
# polygon masks (its default instance_mask_format) or bitmasks.
#   python .venv/lib/python3.11/site-packages/tools/lazyconfig_train_net.py \
#       --config-file configs/detectron2/coco_mask_rcnn_R_50_FPN_mix_lazy.py
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config
from synthaug.integrations.detectron2 import build_synthaug_train_loader

_base = get_config("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py")
model, optimizer, lr_multiplier, train = _base.model, _base.optimizer, _base.lr_multiplier, _base.train
dataloader = _base.dataloader
dataloader.train = L(build_synthaug_train_loader)(  # synthaug: the mix around the same dataset, mapper, batch
    real=dataloader.train.dataset.names,
    store="data/coco_sd15_store",
    mapper=dataloader.train.mapper,
    total_batch_size=dataloader.train.total_batch_size,
    num_workers=dataloader.train.num_workers,
    ratio=0.2,
    policy="class_balanced",
    min_quality=dict(mean_confidence=0.5),
    # class_map={"sports_ball": "sports ball", "wall": None},  # store name -> COCO name or id; None = ignore
)

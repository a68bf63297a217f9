# The toy world, real data only: a small FCN (ResNetV1c-18, 16 base channels) trained from scratch on
# 32x32 renders written by `synthaug toy-data --out data/toy`. Paths are relative to the working directory.
data_root = "data/toy"
# Only for mmcv-lite installs (as in tools/setup_env.py's fallback route): importing synthaug's mmseg
# integration makes the pure-PyTorch ops that mmseg imports available. With full mmcv it changes nothing.
custom_imports = dict(imports=["synthaug.integrations.mmseg"], allow_failed_imports=False)
classes = ("background", "circle", "square", "triangle")
palette = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200]]
crop_size = (32, 32)
norm_cfg = dict(type="BN", requires_grad=True)

model = dict(
    type="EncoderDecoder",
    data_preprocessor=dict(
        type="SegDataPreProcessor",
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=crop_size,
    ),
    backbone=dict(
        type="ResNetV1c",
        depth=18,
        stem_channels=16,
        base_channels=16,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        dilations=(1, 1, 2, 4),
        strides=(1, 2, 1, 1),
        norm_cfg=norm_cfg,
        norm_eval=False,
        style="pytorch",
        contract_dilation=True,
    ),
    decode_head=dict(
        type="FCNHead",
        in_channels=128,
        in_index=3,
        channels=64,
        num_convs=2,
        concat_input=True,
        dropout_ratio=0.1,
        num_classes=len(classes),
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    ),
    train_cfg=dict(),
    test_cfg=dict(mode="whole"),
)

train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackSegInputs"),
]
test_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations"),
    dict(type="PackSegInputs"),
]
toy_train = dict(
    type="BaseSegDataset",
    data_root=data_root,
    data_prefix=dict(img_path="img_dir/train", seg_map_path="ann_dir/train"),
    img_suffix=".png",
    seg_map_suffix=".png",
    metainfo=dict(classes=classes, palette=palette),
    pipeline=train_pipeline,
)
train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    persistent_workers=True,
    sampler=dict(type="InfiniteSampler", shuffle=True),
    dataset=toy_train,
)
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type="DefaultSampler", shuffle=False),
    dataset=dict(
        type="BaseSegDataset",
        data_root=data_root,
        data_prefix=dict(img_path="img_dir/val", seg_map_path="ann_dir/val"),
        img_suffix=".png",
        seg_map_suffix=".png",
        metainfo=dict(classes=classes, palette=palette),
        pipeline=test_pipeline,
    ),
)
test_dataloader = val_dataloader
val_evaluator = dict(type="IoUMetric", iou_metrics=["mIoU"])
test_evaluator = val_evaluator

optim_wrapper = dict(
    type="OptimWrapper", optimizer=dict(type="AdamW", lr=2e-3, weight_decay=1e-4), clip_grad=dict(max_norm=5.0)
)
param_scheduler = [dict(type="PolyLR", eta_min=1e-5, power=0.9, begin=0, end=400, by_epoch=False)]
train_cfg = dict(type="IterBasedTrainLoop", max_iters=400, val_interval=400)
val_cfg = dict(type="ValLoop")
test_cfg = dict(type="TestLoop")

default_scope = "mmseg"
env_cfg = dict(
    cudnn_benchmark=False, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0), dist_cfg=dict(backend="gloo")
)
vis_backends = [dict(type="LocalVisBackend")]
visualizer = dict(type="SegLocalVisualizer", vis_backends=vis_backends, name="visualizer")
log_processor = dict(by_epoch=False)
log_level = "INFO"
load_from = None
resume = False
default_hooks = dict(
    timer=dict(type="IterTimerHook"),
    logger=dict(type="LoggerHook", interval=10, log_metric_by_epoch=False),
    param_scheduler=dict(type="ParamSchedulerHook"),
    checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=400, max_keep_ckpts=1),
    sampler_seed=dict(type="DistSamplerSeedHook"),
    visualization=dict(type="SegVisualizationHook"),
)
randomness = dict(seed=0)

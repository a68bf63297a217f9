# Pascal VOC 2012 (+aug) with DeepLabV3+ R50, from mmseg's own config, plus synthetic samples.
# The lines marked "synthaug" are the whole change (`synthaug wrap-config` writes the same). The store's
# classes are matched to VOC's 21 by name (configs/generate/sd15_voc_templates.yaml writes VOC's names);
# class_map=dict(store_name='voc_name') maps names that differ, None ignores a class.
_base_ = ["mmseg::deeplabv3plus/deeplabv3plus_r50-d8_4xb4-20k_voc12aug-512x512.py"]

custom_imports = dict(imports=["synthaug.integrations.mmseg"], allow_failed_imports=False)  # synthaug
train_dataloader = dict(  # synthaug: wrap VOC's training set (train + aug) as it is
    dataset=dict(
        _delete_=True,
        type="SyntheticMixSegDataset",
        real={{_base_.train_dataloader.dataset}},
        store="data/voc_sd15_store",
        ratio=0.3,
        seed=0,
        policy="class_balanced",
        min_quality=dict(mean_confidence=0.5),
        augment=dict(splice=dict(p_grid=0.3), blur=dict(p_gaussian=0.2, p_edge=0.2)),
    ),
    batch_sampler=dict(type="SynthaugBatchSampler"),  # synthaug: the planned draw, saved in checkpoints
)
custom_hooks = [dict(type="SyntheticPoolHook", interval=500)]  # synthaug

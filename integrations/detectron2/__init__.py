"""synthaug for detectron2: stores as datasets, the mix loader, blur as an Augmentation, hooks, yacs and LazyConfig.

- ``register_store(name, store, task='instance'|'sem_seg')``: DatasetCatalog/MetadataCatalog entries
  (call it inside the function ``launch()`` runs; repeating it is harmless).
- yacs: ``add_synthaug_config(cfg)`` and ``@with_synthaug`` on your Trainer (your build_train_loader, mapper
  and sampler keep working); then
  ``python tools/train_net.py --config-file X.yaml SYNTHAUG.STORE path SYNTHAUG.RATIO 0.3``.
- LazyConfig: ``dataloader.train = L(build_synthaug_train_loader)(real=..., store=..., mapper=..., ...)``
  with detectron2's own DatasetMapper (or yours).
Synthetic items are standard dataset dicts (``file_name``, ``annotations`` / ``sem_seg_file_name``) in the
real dataset's class ids; their files live in memory (``synthaug-mem://``, see memory.py).
"""

from __future__ import annotations

from synthaug.integrations.detectron2.catalog import register_store, store_dataset_dicts
from synthaug.integrations.detectron2.data import (
    MixAsDataset,
    SynthaugBlur,
    SynthaugDatasetMapper,
    SyntheticSafeMapper,
    build_mix,
    build_synthaug_train_loader,
    load_sem_seg_gt,
)
from synthaug.integrations.detectron2.engine import (
    SyntheticPoolHook,
    SyntheticProducerHook,
    add_synthaug_config,
    with_synthaug,
)
from synthaug.integrations.detectron2.loader import SynthaugTrainLoader

LoggingLoader = SynthaugTrainLoader  # the old name

__all__ = [
    "LoggingLoader",
    "MixAsDataset",
    "SynthaugBlur",
    "SynthaugDatasetMapper",
    "SynthaugTrainLoader",
    "SyntheticPoolHook",
    "SyntheticProducerHook",
    "SyntheticSafeMapper",
    "add_synthaug_config",
    "build_mix",
    "build_synthaug_train_loader",
    "load_sem_seg_gt",
    "register_store",
    "store_dataset_dicts",
    "with_synthaug",
]

"""synthaug for detectron2: stores as datasets, the mix loader, blur as an Augmentation, hooks, yacs and LazyConfig.

- ``register_store(name, store, task='instance'|'sem_seg')``: DatasetCatalog/MetadataCatalog entries
  (call it inside the function ``launch()`` runs; repeating it is harmless).
- yacs: ``add_synthaug_config(cfg)`` and ``@with_synthaug`` on your Trainer; then
  ``python tools/train_net.py --config-file X.yaml SYNTHAUG.STORE path SYNTHAUG.RATIO 0.3``.
- LazyConfig: ``dataloader.train = L(build_synthaug_train_loader)(real=..., store=..., mapper=..., ...)``.
"""

from __future__ import annotations

from synthaug.integrations.detectron2.catalog import register_store, store_dataset_dicts
from synthaug.integrations.detectron2.data import (
    LoggingLoader,
    SynthaugBlur,
    SynthaugDatasetMapper,
    build_mix,
    build_synthaug_train_loader,
)
from synthaug.integrations.detectron2.engine import (
    SyntheticPoolHook,
    SyntheticProducerHook,
    add_synthaug_config,
    with_synthaug,
)

__all__ = [
    "LoggingLoader",
    "SynthaugBlur",
    "SynthaugDatasetMapper",
    "SyntheticPoolHook",
    "SyntheticProducerHook",
    "add_synthaug_config",
    "build_mix",
    "build_synthaug_train_loader",
    "register_store",
    "store_dataset_dicts",
    "with_synthaug",
]

"""yacs side: SYNTHAUG.* config keys, a HookBase hook, and a decorator that makes any DefaultTrainer mix."""

from __future__ import annotations

from detectron2.config import CfgNode
from detectron2.engine import HookBase
from synthaug.integrations.detectron2.catalog import register_coco_entries
from synthaug.integrations.detectron2.data import SynthaugDatasetMapper, build_mix, put_counters

from synthaug.mix import SyntheticMixDataset


def add_synthaug_config(cfg: CfgNode) -> CfgNode:
    """Add SYNTHAUG.* keys: STORE ('' = off), TASK, RATIO, SEED, POLICY, MIN_QUALITY, MAX_REPEATS,
    REFRESH_INTERVAL and AUGMENT.{SPLICE_P_GRID, BLUR_P_GAUSSIAN, BLUR_P_MOTION, BLUR_P_EDGE}."""
    cfg.SYNTHAUG = CfgNode()
    cfg.SYNTHAUG.STORE = ""
    cfg.SYNTHAUG.TASK = "instance"
    cfg.SYNTHAUG.RATIO = 0.25
    cfg.SYNTHAUG.SEED = 0
    cfg.SYNTHAUG.POLICY = "uniform"
    cfg.SYNTHAUG.MIN_QUALITY = 0.0  # minimum mean_confidence; 0 keeps everything
    cfg.SYNTHAUG.MAX_REPEATS = 0  # per epoch; 0 = no cap
    cfg.SYNTHAUG.REFRESH_INTERVAL = 50
    # COCO-format datasets to register before training, as "name=annotations.json=image_root" (the toy configs
    # use it; your own datasets may be registered as you always do).
    cfg.SYNTHAUG.REGISTER_COCO = []
    cfg.SYNTHAUG.AUGMENT = CfgNode()
    cfg.SYNTHAUG.AUGMENT.SPLICE_P_GRID = 0.0
    cfg.SYNTHAUG.AUGMENT.BLUR_P_GAUSSIAN = 0.2
    cfg.SYNTHAUG.AUGMENT.BLUR_P_MOTION = 0.0
    cfg.SYNTHAUG.AUGMENT.BLUR_P_EDGE = 0.2
    return cfg


def register_from_cfg(cfg: CfgNode) -> None:
    """Register SYNTHAUG.REGISTER_COCO entries (inside the process `launch()` runs); repeating it is harmless."""
    register_coco_entries(cfg.SYNTHAUG.REGISTER_COCO)


def mix_from_cfg(cfg: CfgNode) -> SyntheticMixDataset:
    """The mix that cfg.SYNTHAUG describes over cfg.DATASETS.TRAIN; wrong values fail here, at start."""
    s, a = cfg.SYNTHAUG, cfg.SYNTHAUG.AUGMENT
    if not s.STORE:
        raise ValueError("SYNTHAUG.STORE is empty: set it to a store path (or do not use the synthaug trainer)")
    augment = {
        "splice": {"p_grid": a.SPLICE_P_GRID},
        "blur": {"p_gaussian": a.BLUR_P_GAUSSIAN, "p_motion": a.BLUR_P_MOTION, "p_edge": a.BLUR_P_EDGE},
    }
    try:
        return build_mix(
            list(cfg.DATASETS.TRAIN),
            s.STORE,
            task=s.TASK,
            ratio=s.RATIO,
            seed=s.SEED,
            policy=s.POLICY,
            min_quality={"mean_confidence": s.MIN_QUALITY} if s.MIN_QUALITY > 0 else None,
            max_repeats=s.MAX_REPEATS or None,
            augment=augment,
        )
    except ValueError as err:
        raise ValueError(f"SYNTHAUG config: {err}") from None


class SyntheticPoolHook(HookBase):
    """Every `interval` iterations, adopt new store samples; every iteration, tell the mix where training is and
    write synthaug/* scalars (synthetic share, pool size, served and skipped samples) to EventStorage."""

    def __init__(self, mix: SyntheticMixDataset, interval: int = 50, images_per_iter: int = 1) -> None:
        self.mix, self.interval = mix, interval
        self._per_pass = max(1, len(mix) // max(1, images_per_iter))

    def before_step(self) -> None:
        it = self.trainer.iter
        if it and it % self.interval == 0:
            self.mix.refresh()
        self.mix.set_iteration(it)
        self.mix.set_epoch(it // self._per_pass)

    def after_step(self) -> None:
        put_counters(self.trainer.storage, self.mix)


def with_synthaug(trainer_cls):
    """Class decorator for a DefaultTrainer subclass: when cfg.SYNTHAUG.STORE is set, train on the mix and add
    the pool hook. Everything else (evaluation, checkpoints, the command line) stays detectron2's."""

    class SynthaugTrainer(trainer_cls):
        def __init__(self, cfg):
            register_from_cfg(cfg)
            super().__init__(cfg)

        @classmethod
        def build_train_loader(cls, cfg):
            if not cfg.SYNTHAUG.STORE:
                return super().build_train_loader(cfg)
            from detectron2.data import build_detection_train_loader

            mix = mix_from_cfg(cfg)
            cls._synthaug_mix = mix
            return build_detection_train_loader(
                mix,
                mapper=SynthaugDatasetMapper(cfg, is_train=True),
                total_batch_size=cfg.SOLVER.IMS_PER_BATCH,
                num_workers=cfg.DATALOADER.NUM_WORKERS,
                aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            )

        def build_hooks(self):
            hooks = super().build_hooks()
            mix = getattr(type(self), "_synthaug_mix", None)
            if mix is not None:
                cfg = self.cfg
                hooks.insert(-1, SyntheticPoolHook(mix, cfg.SYNTHAUG.REFRESH_INTERVAL, cfg.SOLVER.IMS_PER_BATCH))
            return hooks

    SynthaugTrainer.__name__ = SynthaugTrainer.__qualname__ = trainer_cls.__name__
    return SynthaugTrainer

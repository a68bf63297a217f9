"""yacs side: SYNTHAUG.* config keys, a HookBase hook, and a decorator that makes any DefaultTrainer mix."""

from __future__ import annotations

import logging

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
    # Online generation: with PRODUCER.CONFIG set, a producer fills SYNTHAUG.STORE while training runs.
    cfg.SYNTHAUG.PRODUCER = CfgNode()
    cfg.SYNTHAUG.PRODUCER.CONFIG = ""  # a gen.yaml; "" = no producer
    cfg.SYNTHAUG.PRODUCER.DEVICE = "cpu"
    cfg.SYNTHAUG.PRODUCER.TARGET_POOL = 0  # 0 = no rolling pool
    cfg.SYNTHAUG.EMPTY = "error"  # or "wait": wait for a producer's first samples
    cfg.SYNTHAUG.WAIT_TIMEOUT = 600.0
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
            empty=s.EMPTY,
            wait_timeout=s.WAIT_TIMEOUT,
        )
    except ValueError as err:
        raise ValueError(f"SYNTHAUG config: {err}") from None


class SyntheticPoolHook(HookBase):
    """Every `interval` iterations, adopt new store samples; every iteration, tell the mix where training is and
    write synthaug/* scalars (synthetic share, pool size, served and skipped samples) to EventStorage."""

    def __init__(self, mix: SyntheticMixDataset, interval: int = 50, images_per_iter: int = 1) -> None:
        self.mix, self.interval, self.images_per_iter = mix, interval, images_per_iter

    def before_step(self) -> None:
        it = self.trainer.iter
        if it and it % self.interval == 0:
            self.mix.refresh()
        self.mix.follow(it, self.images_per_iter)

    def after_step(self) -> None:
        put_counters(self.trainer.storage, self.mix)


def with_synthaug(trainer_cls):
    """Class decorator for a DefaultTrainer subclass: when cfg.SYNTHAUG.STORE is set, train on the mix and add
    the pool hook. Everything else (evaluation, checkpoints, the command line) stays detectron2's."""

    class SynthaugTrainer(trainer_cls):
        def __init__(self, cfg):
            register_from_cfg(cfg)
            p = cfg.SYNTHAUG.PRODUCER
            self._synthaug_producer = None
            if cfg.SYNTHAUG.STORE and p.CONFIG:  # start before the train loader waits for samples
                self._synthaug_producer = SyntheticProducerHook(
                    cfg.SYNTHAUG.STORE, p.CONFIG, p.DEVICE, p.TARGET_POOL or None
                )
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
            if getattr(self, "_synthaug_producer", None) is not None:
                hooks.insert(-1, self._synthaug_producer)
            return hooks

    SynthaugTrainer.__name__ = SynthaugTrainer.__qualname__ = trainer_cls.__name__
    return SynthaugTrainer


class SyntheticProducerHook(HookBase):
    """Runs `synthaug produce` beside training on the main process (see synthaug.supervisor): started at
    construction (before the train loader waits for samples), restarted with back-off if it dies, stopped
    after training; its rate, produced count and restarts go to EventStorage as synthaug/producer_*."""

    def __init__(
        self,
        store: str,
        config: str | None = None,
        device: str = "cpu",
        target_pool: int | None = None,
        max_samples: int | None = None,
        retire_grace_s: float = 600.0,
        cpu_threads: int = 1,
        nice: int = 10,
    ) -> None:
        from detectron2.utils import comm

        from synthaug.supervisor import ProducerSupervisor

        self.supervisor = None
        if comm.is_main_process():
            self.supervisor = ProducerSupervisor(
                store,
                config=config,
                device=device,
                target_pool=target_pool,
                max_samples=max_samples,
                retire_grace_s=retire_grace_s,
                cpu_threads=cpu_threads,
                nice=nice,
                log_fn=logging.getLogger("detectron2").info,
            )
            self.supervisor.start()

    def after_step(self) -> None:
        # The status is a file the producer writes: read it when detectron2's writers write (every 20
        # iterations and at the end), not on every step.
        nxt = self.trainer.iter + 1
        if self.supervisor is None or (nxt % 20 and nxt < self.trainer.max_iter):
            return
        s = self.supervisor.status()
        storage = self.trainer.storage
        storage.put_scalar("synthaug/producer_rate", float(s.get("rate", 0.0)), smoothing_hint=False)
        storage.put_scalar("synthaug/producer_produced", float(s.get("produced", 0)), smoothing_hint=False)
        storage.put_scalar("synthaug/producer_restarts", float(s["restarts"]), smoothing_hint=False)

    def after_train(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()

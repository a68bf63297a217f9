"""yacs side: SYNTHAUG.* config keys, a HookBase hook, and a decorator that makes any DefaultTrainer mix."""

from __future__ import annotations

import logging
from typing import Any

from detectron2.config import CfgNode
from detectron2.data.build import get_detection_dataset_dicts
from detectron2.engine import HookBase
from synthaug.integrations.detectron2.catalog import register_coco_entries
from synthaug.integrations.detectron2.data import MixAsDataset, build_mix, register_mix
from synthaug.integrations.detectron2.loader import SynthaugTrainLoader, wrap_train_loader

from synthaug.vocabulary import parse_class_map


def add_synthaug_config(cfg: CfgNode) -> CfgNode:
    """Add SYNTHAUG.* keys: STORE ('' = off), TASK, RATIO (+ RATIO_WARMUP, RATIO_END, RATIO_ITERATIONS), SEED,
    POLICY, MIN_QUALITY, MAX_REPEATS, LOSS_FILTER, MAX_IGNORED, HARDNESS_CAP, CLASS_MAP, REFRESH_INTERVAL,
    VIS_PERIOD and AUGMENT.{SPLICE_P_GRID, BLUR_P_GAUSSIAN, BLUR_P_MOTION, BLUR_P_EDGE}."""
    cfg.SYNTHAUG = CfgNode()
    cfg.SYNTHAUG.STORE = ""
    cfg.SYNTHAUG.TASK = "instance"  # or "sem_seg": classes are matched to thing_classes or stuff_classes
    cfg.SYNTHAUG.RATIO = 0.25
    cfg.SYNTHAUG.RATIO_WARMUP = 0  # real-only iterations at the start
    cfg.SYNTHAUG.RATIO_END = -1.0  # >= 0: the ratio goes linearly from RATIO to RATIO_END over RATIO_ITERATIONS
    cfg.SYNTHAUG.RATIO_ITERATIONS = 0
    cfg.SYNTHAUG.SEED = 0
    cfg.SYNTHAUG.POLICY = "uniform"
    cfg.SYNTHAUG.MIN_QUALITY = 0.0  # minimum mean_confidence; 0 keeps everything
    cfg.SYNTHAUG.MAX_REPEATS = 0  # per epoch; 0 = no cap
    # Loss filtering (synthaug.scoring): ignore the pixels the store's newest scores call noise, and leave out
    # samples with more than MAX_IGNORED of their labelled pixels ignored. POLICY "hardness" uses the scores too.
    cfg.SYNTHAUG.LOSS_FILTER = False
    cfg.SYNTHAUG.MAX_IGNORED = 0.5
    cfg.SYNTHAUG.HARDNESS_CAP = 3.0
    # Store classes whose names differ from the dataset's (matched ignoring case, surrounding space, '_', '-'):
    # "store_name=dataset_name" or "store_name=dataset_id"; "store_name=" ignores that class.
    cfg.SYNTHAUG.CLASS_MAP = []
    cfg.SYNTHAUG.REFRESH_INTERVAL = 50
    cfg.SYNTHAUG.VIS_PERIOD = 0  # every N iterations a row of synthetic samples to TensorBoard; 0 = never
    # COCO-format datasets to register before training, as "name=annotations.json=image_root" (the toy configs
    # use it; your own datasets may be registered as you always do).
    cfg.SYNTHAUG.REGISTER_COCO = []
    # Online generation: with PRODUCER.CONFIG set, a producer fills SYNTHAUG.STORE while training runs.
    cfg.SYNTHAUG.PRODUCER = CfgNode()
    cfg.SYNTHAUG.PRODUCER.CONFIG = ""  # a gen.yaml; "" = no producer
    cfg.SYNTHAUG.PRODUCER.DEVICE = "cpu"
    cfg.SYNTHAUG.PRODUCER.TARGET_POOL = 0  # 0 = no rolling pool
    # Live loss filtering: the producer re-scores the store with each checkpoint this run saves
    # (SOLVER.CHECKPOINT_PERIOD), and with HARDNESS_BIAS prompts for the classes the scores find hard.
    cfg.SYNTHAUG.PRODUCER.SCORE = False
    cfg.SYNTHAUG.PRODUCER.SCORE_EVERY = 1  # look for a new checkpoint every N generated batches
    cfg.SYNTHAUG.PRODUCER.SCORE_MARGIN = 1.25
    # the filter's label probability floor; None: the default of the model's kind (synthaug.scoring)
    cfg.SYNTHAUG.PRODUCER.SCORE_MIN_PROBABILITY = None
    cfg.SYNTHAUG.PRODUCER.HARDNESS_BIAS = False
    cfg.SYNTHAUG.EMPTY = "error"  # or "wait": wait for a producer's first samples
    cfg.SYNTHAUG.WAIT_TIMEOUT = 600.0
    cfg.SYNTHAUG.AUGMENT = CfgNode()
    cfg.SYNTHAUG.AUGMENT.SPLICE_P_GRID = 0.0
    cfg.SYNTHAUG.AUGMENT.BLUR_P_GAUSSIAN = 0.2
    cfg.SYNTHAUG.AUGMENT.BLUR_P_MOTION = 0.0
    cfg.SYNTHAUG.AUGMENT.BLUR_P_EDGE = 0.2
    return cfg


def ratio_from_cfg(s: CfgNode) -> float | dict:
    """SYNTHAUG.RATIO with its warm-up and linear end as the mix's ratio (a number or a schedule dict)."""
    if s.RATIO_END < 0:
        return dict(type="constant", ratio=s.RATIO, warmup=s.RATIO_WARMUP) if s.RATIO_WARMUP else s.RATIO
    return dict(type="linear", start=s.RATIO, end=s.RATIO_END, iterations=s.RATIO_ITERATIONS, warmup=s.RATIO_WARMUP)


def register_from_cfg(cfg: CfgNode) -> None:
    """Register SYNTHAUG.REGISTER_COCO entries (inside the process `launch()` runs); repeating it is harmless."""
    register_coco_entries(cfg.SYNTHAUG.REGISTER_COCO)


def mix_from_cfg(cfg: CfgNode) -> MixAsDataset:
    """The mix that cfg.SYNTHAUG describes over cfg.DATASETS.TRAIN (loaded as detectron2 loads them: empty
    filter, keypoints, proposals, metadata checks); wrong values fail here, at start."""
    s, a = cfg.SYNTHAUG, cfg.SYNTHAUG.AUGMENT
    if not s.STORE:
        raise ValueError("SYNTHAUG.STORE is empty: set it to a store path (or do not use the synthaug trainer)")
    check_task_fits_mapper(cfg)
    augment = {
        "splice": {"p_grid": a.SPLICE_P_GRID},
        "blur": {"p_gaussian": a.BLUR_P_GAUSSIAN, "p_motion": a.BLUR_P_MOTION, "p_edge": a.BLUR_P_EDGE},
    }
    real_dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    try:
        return build_mix(
            list(cfg.DATASETS.TRAIN),
            s.STORE,
            task=s.TASK,
            ratio=ratio_from_cfg(s),
            seed=s.SEED,
            class_map=parse_class_map(s.CLASS_MAP, "SYNTHAUG.CLASS_MAP"),
            class_map_key="SYNTHAUG.CLASS_MAP",
            mask_format=cfg.INPUT.MASK_FORMAT,
            real_dicts=real_dicts,
            policy=s.POLICY,
            min_quality={"mean_confidence": s.MIN_QUALITY} if s.MIN_QUALITY > 0 else None,
            max_repeats=s.MAX_REPEATS or None,
            loss_filter=s.LOSS_FILTER,
            max_ignored=s.MAX_IGNORED,
            hardness_cap=s.HARDNESS_CAP,
            augment=augment,
            empty=s.EMPTY,
            wait_timeout=s.WAIT_TIMEOUT,
            reader_lease=bool(s.PRODUCER.CONFIG and s.PRODUCER.TARGET_POOL > 0),
        )
    except ValueError as err:
        raise ValueError(f"SYNTHAUG config: {err}") from None


def check_task_fits_mapper(cfg: CfgNode) -> None:
    """Mask2Former's INPUT.DATASET_MAPPER_NAME decides the task its mapper reads: SYNTHAUG.TASK must be it."""
    from synthaug.wrap_config import mapper_task

    mapper = cfg.INPUT.get("DATASET_MAPPER_NAME")
    task = mapper_task(mapper) if isinstance(mapper, str) else None
    if task is not None and task != cfg.SYNTHAUG.TASK:
        raise ValueError(
            f"SYNTHAUG.TASK {cfg.SYNTHAUG.TASK} does not fit INPUT.DATASET_MAPPER_NAME {mapper}, which reads {task} "
            f"labels: set SYNTHAUG.TASK {task}"
        )


def producer_from_cfg(cfg: CfgNode) -> SyntheticProducerHook | None:
    """The producer hook SYNTHAUG.PRODUCER asks for (None without PRODUCER.CONFIG), started now. With
    PRODUCER.SCORE it re-scores the store with this run's checkpoints: the model is rebuilt from a copy of this
    config saved in OUTPUT_DIR, and its classes are this run's datasets' (the producer cannot register them)."""
    import os

    from detectron2.utils import comm
    from synthaug.integrations.detectron2.data import dataset_classes

    s, p = cfg.SYNTHAUG, cfg.SYNTHAUG.PRODUCER
    if not (s.STORE and p.CONFIG):
        if p.SCORE or p.HARDNESS_BIAS:
            raise ValueError(
                f"SYNTHAUG.PRODUCER.SCORE={p.SCORE} / HARDNESS_BIAS={p.HARDNESS_BIAS} need a producer: set "
                "SYNTHAUG.STORE and SYNTHAUG.PRODUCER.CONFIG (or score offline with `synthaug score`)"
            )
        return None
    score = None
    if p.SCORE:
        if p.SCORE_EVERY < 1 or p.SCORE_MARGIN <= 0:
            raise ValueError(
                f"SYNTHAUG.PRODUCER.SCORE_EVERY={p.SCORE_EVERY} / SCORE_MARGIN={p.SCORE_MARGIN}: use an every >= 1 "
                "(batches between checkpoint polls) and a margin > 0 (1.25 by default)"
            )
        from synthaug.scoring import FilterRule

        try:  # the rule's own check of the floor, with the key named
            FilterRule(min_probability=p.SCORE_MIN_PROBABILITY)
        except ValueError:
            raise ValueError(
                f"SYNTHAUG.PRODUCER.SCORE_MIN_PROBABILITY={p.SCORE_MIN_PROBABILITY!r}: use a label probability in "
                "(0, 1], or None for the model's default (0.5 for instance masks, 0.1 for a semantic model)"
            ) from None
        saved = os.path.join(cfg.OUTPUT_DIR, "synthaug_scoring_config.yaml")
        if comm.is_main_process():
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            with open(saved, "w") as f:
                f.write(cfg.dump())
        score = dict(
            config=saved,
            work_dir=cfg.OUTPUT_DIR,
            every=p.SCORE_EVERY,
            margin=p.SCORE_MARGIN,
            min_probability=p.SCORE_MIN_PROBABILITY,
            framework="detectron2",
            classes=dataset_classes(list(cfg.DATASETS.TRAIN), s.TASK),
            class_map=parse_class_map(s.CLASS_MAP, "SYNTHAUG.CLASS_MAP") or None,
        )
    return SyntheticProducerHook(
        s.STORE,
        task=s.TASK,
        config=p.CONFIG,
        device=p.DEVICE,
        target_pool=p.TARGET_POOL or None,
        score=score,
        hardness_bias=p.HARDNESS_BIAS,
    )


def with_train_datasets(cfg: CfgNode, names: tuple[str, ...]) -> CfgNode:
    """A copy of cfg whose DATASETS.TRAIN is `names` (frozen if cfg was)."""
    if cfg.DATASETS.get("TRAIN_REPEAT_FACTOR") and cfg.DATALOADER.SAMPLER_TRAIN.startswith("Weighted"):
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {cfg.DATALOADER.SAMPLER_TRAIN} with DATASETS.TRAIN_REPEAT_FACTOR "
            f"{list(cfg.DATASETS.TRAIN_REPEAT_FACTOR)}: the datasets are trained as one synthaug mix, so "
            "per-dataset repeat factors cannot apply; use TrainingSampler or RepeatFactorTrainingSampler"
        )
    out = cfg.clone()
    out.defrost()
    out.DATASETS.TRAIN = names
    if cfg.is_frozen():
        out.freeze()
    return out


class SyntheticPoolHook(HookBase):
    """Every `interval` iterations, adopt new store samples; every iteration, tell the mix where training is.
    The loader writes the synthaug/* scalars and the console line; this hook saves and restores its
    counters in detectron2's checkpoints (TrainerBase.state_dict), so a resumed run counts on."""

    def __init__(self, loader: SynthaugTrainLoader, interval: int = 50, images_per_iter: int = 1) -> None:
        self.loader, self.mix = loader, loader.mix
        self.interval, self.images_per_iter = interval, images_per_iter

    def before_step(self) -> None:
        it = self.trainer.iter
        if self.mix.refresh_due(it, self.interval):
            self.mix.refresh()
        self.mix.follow(it, self.images_per_iter)

    def after_step(self) -> None:
        it, period = self.trainer.iter, self.loader.log_period
        if it == self.trainer.max_iter - 1 and (it + 1) % period:  # the last line, as detectron2's writers do
            self.loader.log_line(it)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def with_synthaug(trainer_cls):
    """Class decorator for a DefaultTrainer subclass: when cfg.SYNTHAUG.STORE is set, YOUR build_train_loader
    (mapper, sampler, filters) runs with the mix as cfg.DATASETS.TRAIN, your mapper is wrapped to skip failing
    synthetic items, and the pool hook is added. Evaluation, checkpoints and the command line stay yours."""

    class SynthaugTrainer(trainer_cls):
        def __init__(self, cfg):
            register_from_cfg(cfg)
            self._synthaug_producer = producer_from_cfg(cfg)  # before the train loader waits for samples
            super().__init__(cfg)

        @classmethod
        def build_train_loader(cls, cfg):
            if not cfg.SYNTHAUG.STORE:
                return super().build_train_loader(cfg)
            register_from_cfg(cfg)
            dataset = mix_from_cfg(cfg)
            name = register_mix(dataset, list(cfg.DATASETS.TRAIN))
            loader = super().build_train_loader(with_train_datasets(cfg, (name,)))
            return wrap_train_loader(
                loader,
                dataset,
                refresh_interval=cfg.SYNTHAUG.REFRESH_INTERVAL,
                drive=False,
                vis_period=cfg.SYNTHAUG.VIS_PERIOD,
                image_format=cfg.INPUT.FORMAT,
                images_per_iteration=cfg.SOLVER.IMS_PER_BATCH,
            )

        def build_hooks(self):
            hooks = super().build_hooks()
            loader = getattr(self._trainer, "data_loader", None)
            if isinstance(loader, SynthaugTrainLoader):
                cfg = self.cfg
                hooks.insert(-1, SyntheticPoolHook(loader, cfg.SYNTHAUG.REFRESH_INTERVAL, cfg.SOLVER.IMS_PER_BATCH))
            if getattr(self, "_synthaug_producer", None) is not None:
                hooks.insert(-1, self._synthaug_producer)
            return hooks

    SynthaugTrainer.__name__ = SynthaugTrainer.__qualname__ = trainer_cls.__name__
    return SynthaugTrainer


def evaluation_class_figures(latest: dict[str, tuple[float, int]], iteration: int, kind: str) -> dict[str, float]:
    """Per-class figures (0..1) of the evaluation at `iteration` in EventStorage.latest(): `kind` 'segm/AP'
    (segm/AP-<class>) or 'sem_seg/IoU'; with several test datasets (keys '<dataset>/segm/AP-<class>') the
    first one's. {} if there was no such evaluation."""
    by_dataset: dict[str, dict[str, float]] = {}
    for key, (value, at) in latest.items():
        head, sep, name = key.partition(kind + "-")
        if at == iteration and sep and (head == "" or head.endswith("/")) and name:
            by_dataset.setdefault(head, {})[name] = value / 100.0
    return next(iter(by_dataset.values()), {})


class SyntheticProducerHook(HookBase):
    """Runs `synthaug produce` beside training on the main process (see synthaug.supervisor): started at
    construction (before the train loader waits for samples), restarted with back-off if it dies, stopped
    after training; its rate, produced count and restarts go to EventStorage as synthaug/producer_*."""

    def __init__(self, store: str, task: str = "instance", **producer: Any) -> None:
        """`producer`: ProducerSupervisor's settings (config, device, target_pool, max_samples,
        retire_grace_s, cpu_threads, nice, score, hardness_bias), with its defaults. `task`: which evaluation
        figures hand the producer per-class validation results ('instance': segm AP, 'sem_seg': IoU)."""
        from detectron2.utils import comm

        from synthaug.supervisor import ProducerSupervisor

        self.supervisor = None
        # with live scoring and the hardness bias, the producer also weighs classes by this run's validation
        score = producer.get("score") or {}
        self.iou_dir = score.get("work_dir") if producer.get("hardness_bias") else None
        self.iou_kind = "sem_seg/IoU" if task == "sem_seg" else "segm/AP"
        self.evaluated = -1
        if comm.is_main_process():
            log_fn = logging.getLogger("detectron2").info
            self.supervisor = ProducerSupervisor(store, **producer, log_fn=log_fn)
            self.supervisor.start()

    def after_step(self) -> None:
        if self.supervisor is not None and self.iou_dir:
            self._hand_over_class_iou()
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

    def _hand_over_class_iou(self) -> None:
        """After an evaluation (EvalHook runs before this hook), write its per-class figures for the producer."""
        it = self.trainer.iter
        if it != self.evaluated:
            found = evaluation_class_figures(self.trainer.storage.latest(), it, self.iou_kind)
            if found:
                from synthaug.scoring import write_class_iou

                write_class_iou(self.iou_dir, it, found)
                self.evaluated = it

    def after_train(self) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()

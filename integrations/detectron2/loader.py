"""The train loader around the mix: counts what the model trains on, logs it, and finds the user's mapper.

``SynthaugTrainLoader`` yields the wrapped loader's batches unchanged. It counts the synthetic items in
each batch (the consumed share: a DataLoader prefetches, so what the mix served is not what was trained
on), writes synthaug/* scalars to detectron2's EventStorage, logs a console line every `log_period`
iterations (detectron2's CommonMetricPrinter prints only losses and times), and can send a grid of
synthetic samples with their labels to ``EventStorage.put_image`` (TensorBoard).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from synthaug.integrations.detectron2 import memory
from synthaug.integrations.detectron2.catalog import SYNTHETIC_KEY
from synthaug.integrations.detectron2.data import MixAsDataset, SyntheticSafeMapper

from synthaug.mix import COUNTERS, LOGGED_COUNTERS, ConsumedTally, SyntheticMixDataset
from synthaug.mix_plan import PlannedSampler, untag

log = logging.getLogger("detectron2.synthaug")
LOG_PERIOD = 20  # detectron2's DefaultTrainer writes metrics every 20 iterations


class SynthaugTrainLoader:
    """Yields the batches of `loader` (built over the mix) and reports what they hold (module docstring).

    drive=True (LazyConfig, no hook): it also refreshes the pool every `refresh_interval` batches and tells
    the mix the iteration. With the yacs trainer, SyntheticPoolHook does that and saves the counters.
    """

    def __init__(
        self,
        loader: Any,
        mix: SyntheticMixDataset,
        refresh_interval: int = 50,
        drive: bool = True,
        log_period: int = LOG_PERIOD,
        vis_period: int = 0,
        image_format: str = "BGR",
        images_per_iteration: int | None = None,
    ) -> None:
        self.loader, self.mix, self.refresh_interval, self.drive = loader, mix, refresh_interval, drive
        self.log_period, self.vis_period, self.image_format = log_period, vis_period, image_format
        self.consumed = ConsumedTally()
        self.offsets: dict[str, float] = {}  # served counters of the run this one resumes
        # all ranks together (the total batch): what one iteration takes from the mix
        self.images_per_iteration = int(images_per_iteration or getattr(loader, "batch_size", None) or 1)
        # iterations the workers may run ahead of training: epochs are planned that far ahead
        self.lookahead = lookahead_iterations(loader, self.images_per_iteration)

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:  # the wrapped loader's attributes (batch_size, dataset...)
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        storage = current_storage()
        start = storage.iter if storage is not None else 0
        if self.mix.planned:  # detectron2 does not replay its data on resume: the stream starts where training is
            self.mix.resume_at(start)
            self.mix.plan_ahead(start, self.lookahead)
        for step, batch in enumerate(self.loader):
            self.mix.plan_ahead(start + step, self.lookahead)  # the batches taken since start, trainer or not
            storage = current_storage()
            iteration = storage.iter if storage is not None else start + step
            if self.drive:
                self.before_iteration(iteration)
            flags = synthetic_flags(batch)
            self.consumed.add(*all_ranks_sum(sum(flags), len(flags)))
            if storage is not None:
                self.report(storage, storage.iter)
                if self.vis_period and (storage.iter + 1) % self.vis_period == 0 and any(flags):
                    self.show(storage, batch, flags)
            yield batch

    def before_iteration(self, iteration: int) -> None:
        """Refresh the pool every `refresh_interval` iterations and tell the mix where training is."""
        if self.mix.refresh_due(iteration, self.refresh_interval):
            self.mix.refresh()
        self.mix.follow(iteration, self.images_per_iteration)

    def totals(self) -> dict[str, float]:
        """The mix's counters plus those of the resumed run, and the consumed share."""
        c = self.mix.counters()
        out = {k: float(c[k]) + self.offsets.get(k, 0.0) for k in COUNTERS}
        out["pool_size"] = float(c["pool_size"])
        out["synthetic_share"] = self.consumed.share
        out["consumed_synthetic"] = float(self.consumed.synthetic)
        out["consumed_images"] = float(self.consumed.synthetic + self.consumed.real)
        out.update({k: float(c[k]) for k in ("ignored_share", "filtered_out") if k in c})
        return out

    def report(self, storage: EventStorage, iteration: int) -> None:
        """synthaug/* scalars every iteration; a console line every `log_period` iterations."""
        t = self.totals()
        for key in (k for k in (*LOGGED_COUNTERS, "consumed_synthetic") if k in t):
            storage.put_scalar(f"synthaug/{key}", t[key], smoothing_hint=False)
        if (iteration + 1) % self.log_period == 0:
            self.log_line(iteration, t)

    def log_line(self, iteration: int, totals: dict[str, float] | None = None) -> None:
        """The console line: what the model trained on so far, the pool, the skipped samples."""
        t = totals or self.totals()
        log.info(
            "synthaug: iter %d: trained on %d synthetic of %d images (share %.3f, ratio %s), pool %d, skipped %d",
            iteration + 1,
            t["consumed_synthetic"],
            t["consumed_images"],
            t["synthetic_share"],
            self.mix.schedule(iteration),
            t["pool_size"],
            t["corrupt_skipped"],
        )

    def state_dict(self) -> dict[str, Any]:
        t = self.totals()
        return {"consumed": self.consumed.state_dict(), "served": {k: t[k] for k in COUNTERS}, **self.mix.plan_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed.load_state_dict(state.get("consumed", {}))
        self.offsets = {k: float(v) for k, v in dict(state.get("served", {})).items()}
        if "plan" in state:  # every epoch the saved run planned draws from the snapshot it drew from then
            self.mix.load_plan_state(state)

    def show(self, storage: EventStorage, batch: list, flags: list[bool], most: int = 8) -> None:
        """A row of the batch's synthetic inputs (as the model gets them) with their labels overlaid."""
        tiles = [overlay(d, self.image_format) for d, f in zip(batch, flags) if f][:most]
        if tiles:
            storage.put_image("synthaug/samples", row_of(tiles).transpose(2, 0, 1))


def current_storage() -> EventStorage | None:
    from detectron2.utils.events import get_event_storage

    try:
        return get_event_storage()
    except AssertionError:  # not inside a trainer
        return None


def synthetic_flags(batch: Any) -> list[bool]:
    """Which items of a batch (a list of mapped dicts) are synthetic; [] for batches of another form."""
    if not isinstance(batch, (list, tuple)):
        return []
    return [isinstance(d, dict) and d.get(SYNTHETIC_KEY) is not None for d in batch]


def all_ranks_sum(*values: int) -> tuple[int, ...]:
    """Sum small counts over every rank (a no-op outside distributed training)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.int64)
    torch.distributed.all_reduce(t)
    return tuple(int(v) for v in t.tolist())


def palette() -> np.ndarray:
    """(256, 3) uint8: detectron2's distinct colours by class id (ignore, 255, is never drawn)."""
    from detectron2.utils.colormap import colormap

    colours = colormap(rgb=True, maximum=255).astype(np.uint8)
    return colours[np.arange(256) % len(colours)]


def overlay(item: dict, image_format: str) -> np.ndarray:
    """(2H, W, 3) RGB uint8: the mapped image above the same image with its sem_seg or instance labels."""
    image = item["image"].permute(1, 2, 0).numpy().astype(np.uint8)
    image = image[..., ::-1] if image_format == "BGR" else image
    labels = np.full(image.shape[:2], 255, np.int64)
    if "sem_seg" in item:
        labels = item["sem_seg"].numpy().astype(np.int64)
    elif "instances" in item and item["instances"].has("gt_masks"):
        inst = item["instances"]
        masks = inst.gt_masks
        dense = masks.tensor.numpy() if hasattr(masks, "tensor") else None
        if dense is None:  # PolygonMasks
            from detectron2.structures import polygons_to_bitmask

            dense = np.stack([polygons_to_bitmask(p, *image.shape[:2]) for p in masks.polygons] or [labels < 0])
        for m, c in zip(dense, inst.gt_classes.tolist()):
            labels[m.astype(bool)] = c
    colours = palette()[np.clip(labels, 0, 255)]
    shown = (labels != 255)[..., None]
    return np.concatenate([image, np.where(shown, (0.3 * image + 0.7 * colours).astype(np.uint8), image)], axis=0)


def row_of(tiles: list[np.ndarray]) -> np.ndarray:
    """Tiles side by side on a black canvas as tall as the tallest."""
    h = max(t.shape[0] for t in tiles)
    padded = [np.pad(t, ((0, h - t.shape[0]), (0, 2), (0, 0))) for t in tiles]
    return np.ascontiguousarray(np.concatenate(padded, axis=1))


def wrap_train_loader(loader: Any, dataset: MixAsDataset, **options: Any) -> SynthaugTrainLoader:
    """Wrap the mapper(s) that detectron2's MapDataset applies to `dataset` inside `loader` (a loader the
    user's build_train_loader made) in SyntheticSafeMapper, and the loader in SynthaugTrainLoader."""
    found = [m for m in reachable(loader) if getattr(m, "_dataset", None) is dataset and hasattr(m, "_map_func")]
    if not found:
        raise RuntimeError(
            "the train loader that build_train_loader returned does not read the synthaug mix (expected as "
            "cfg.DATASETS.TRAIN, mapped by detectron2's MapDataset): build it with "
            "detectron2.data.build_detection_train_loader(cfg, mapper=...), which loads cfg.DATASETS.TRAIN"
        )
    for m in found:
        if not isinstance(m._map_func, SyntheticSafeMapper):
            check_mapper_fields(m._map_func, dataset)
            m._map_func = SyntheticSafeMapper(m._map_func, dataset.mix)
    wrapped = SynthaugTrainLoader(loader, dataset.mix, **options)
    plan_samplers(loader, dataset.mix, wrapped.images_per_iteration)
    return wrapped


#: detectron2's standard dataset-dict fields; a mapper error that quotes one a synthetic item lacks names it
DATASET_FIELDS = frozenset(
    {
        *("file_name", "height", "width", "image_id", "annotations", "sem_seg_file_name", "pan_seg_file_name"),
        *("segments_info", "proposal_boxes", "proposal_objectness_logits", "proposal_bbox_mode"),
    }
)


#: what a mapped item trains on; a synthetic item mapped without one a mapped real item has would break training
TRAINING_TARGETS = ("image", "instances", "sem_seg")


def check_mapper_fields(mapper: Callable[[dict], Any], dataset: MixAsDataset) -> None:
    """Map one synthetic item (and one real item, for comparison) with the user's mapper at start. A dataset-dict
    field the mapper needs that synthetic items lack (a panoptic mapper's `pan_seg_file_name`), or a training
    target the real item gets and the synthetic one does not (a task that does not fit the mapper), is an error
    naming it, not a run that skips every synthetic sample. Other failures are logged; failing items are then
    skipped and counted as always. Random states are restored, so the probe changes no draw of the run."""
    mix = dataset.mix
    item = mix.synthetic_example()
    if not isinstance(item, dict):
        return
    real = mix.real[0] if len(mix.real) and isinstance(mix.real[0], dict) else None
    inner = getattr(mapper, "_obj", mapper)  # detectron2's MapDataset keeps it in a PicklableWrapper
    name = getattr(inner, "__qualname__", None) or type(inner).__name__
    states = np.random.get_state(), random.getstate(), torch.get_rng_state()
    try:
        try:
            out = mapper(item)
        except Exception as err:
            quoted = err.args[:1] if isinstance(err, KeyError) else re.findall(r"'(\w+)'", str(err))
            missing = [f for f in quoted if f in DATASET_FIELDS and f not in item]
            if not missing:
                log.warning(
                    "synthaug: a synthetic sample fails the train mapper %s at start (%s: %s); failing samples are "
                    "skipped and counted",
                    name,
                    type(err).__name__,
                    err,
                )
                return
            held = ", ".join(sorted(k for k in item if k != SYNTHETIC_KEY))
            whose = (
                "which neither the real dataset's dicts nor synthetic items have: the mapper does not fit the dataset"
                if real is not None and missing[0] not in real
                else f"which synthetic items cannot give (they hold: {held})"
            )
            raise ValueError(
                f"the train mapper {name} needs the field {missing[0]!r} in each dataset dict, {whose}. Synthetic "
                "items are standard instance or semantic dataset dicts: use a mapper that reads those (detectron2's "
                "DatasetMapper; for Mask2Former INPUT.DATASET_MAPPER_NAME mask_former_semantic with SYNTHAUG.TASK "
                "sem_seg, or mask_former_instance / coco_instance_lsj with SYNTHAUG.TASK instance)"
            ) from None
        if real is None or not isinstance(out, dict):
            return
        try:
            real_out = mapper(dict(real))
        except Exception:  # the real item's own trouble is the run's to report, not the probe's
            return
        lacking = [k for k in TRAINING_TARGETS if isinstance(real_out, dict) and k in real_out and k not in out]
        if lacking:
            raise ValueError(
                f"the train mapper {name} gives real items {lacking[0]!r} but synthetic items none: synthetic items "
                f"are made for SYNTHAUG.TASK / task {dataset.task!r}, which this mapper does not read. Set the task "
                "this mapper trains (instance: annotations; sem_seg: sem_seg_file_name)"
            )
    finally:
        memory.drop(memory.paths_of(item))
        np.random.set_state(states[0])
        random.setstate(states[1])
        torch.set_rng_state(states[2])


def lookahead_iterations(loader: Any, images_per_iteration: int) -> int:
    """Iterations that DataLoader workers may run ahead of training, so epochs are planned before they get there:
    each of W workers prefetches `prefetch_factor` items or batches and detectron2 shards the sampler in
    chunks of a batch, so positions run up to about W * (B + prefetch) ahead of the one being trained."""
    per_rank = max(1, images_per_iteration // comm.get_world_size())
    ahead = 0
    for obj in reachable(loader):
        if isinstance(obj, torch.utils.data.DataLoader) and obj.num_workers:
            batch = obj.batch_size or 1
            ahead += obj.num_workers * (per_rank + (obj.prefetch_factor or 2) * batch)
    return 4 + -(-ahead // per_rank)


class PlainIndices(set):
    """detectron2's MapDataset keeps every index it mapped, to retry with one when the mapper returns None. Tagged
    indices are all different (synthaug.mix_plan), so the set would grow without end: this one keeps plain
    indices only (a retry is a plain index, served from the plan's epoch of the training clock)."""

    def __init__(self, length: int, keys=()) -> None:
        super().__init__(untag(k, length)[0] for k in keys)
        self.length = length

    def add(self, key: int) -> None:
        super().add(untag(key, self.length)[0])

    def discard(self, key: int) -> None:
        super().discard(untag(key, self.length)[0])


def plan_samplers(loader: Any, mix: SyntheticMixDataset, images_per_iteration: int) -> int:
    """Wrap the sampler of each ToIterableDataset over the mix in a PlannedSampler, so every index carries its
    place in training into the worker that maps it (see synthaug.mix_plan); returns how many were wrapped."""
    world = comm.get_world_size()
    wrapped = 0
    for obj in reachable(loader):
        sampler = getattr(obj, "sampler", None)
        if type(obj).__name__ != "ToIterableDataset" or not reaches_mix(obj, mix):
            continue
        if not isinstance(sampler, PlannedSampler):
            obj.sampler = PlannedSampler(sampler, mix, max(1, images_per_iteration // world), world)
        wrapped += 1
    for obj in reachable(loader):  # the MapDatasets over the mix keep plain indices for their retries
        candidates = getattr(obj, "_fallback_candidates", None)
        if isinstance(candidates, set) and not isinstance(candidates, PlainIndices) and reaches_mix(obj, mix):
            obj._fallback_candidates = PlainIndices(len(mix), candidates)
    return wrapped


def reaches_mix(obj: Any, mix: SyntheticMixDataset) -> bool:
    """Whether `mix` is reachable below `obj` (its dataset chain)."""
    return any(getattr(o, "mix", None) is mix for o in reachable(obj))


def reachable(root: Any, depth: int = 8) -> Iterator[Any]:
    """Objects reachable from a loader through dataset-ish attributes (DataLoader.dataset,
    ToIterableDataset.dataset, MapDataset._dataset, AspectRatioGroupedDataset.dataset...)."""
    seen: set[int] = set()
    frontier = [root]
    for _ in range(depth):
        nxt = []
        for obj in frontier:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            yield obj
            for attr in ("dataset", "_dataset", "loader", "data_loader", "_loader", "datasets"):
                try:
                    child = getattr(obj, attr, None)
                except Exception:  # a property that fails is no path to the dataset
                    child = None
                if isinstance(child, (list, tuple)):
                    nxt.extend(child)
                elif child is not None:
                    nxt.append(child)
        frontier = nxt

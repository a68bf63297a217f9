"""`SyntheticPoolHook`: grows the synthetic pool during training and logs what the mix served."""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from synthaug.mix import LOGGED_COUNTERS, ConsumedTally, SyntheticMixDataset
from synthaug.visualize import contact_sheet, overlay


def find_mix(dataset) -> SyntheticMixDataset | None:
    """The SyntheticMixDataset inside a (possibly wrapped) training dataset, if any."""
    seen = 0
    while dataset is not None and seen < 8:
        if isinstance(dataset, SyntheticMixDataset):
            return dataset
        dataset = getattr(dataset, "mix", None) or getattr(dataset, "dataset", None)
        seen += 1
    return None


SYNTHETIC_PATH_PREFIX = "synthaug:"  # img_path of synthetic items (see dataset.SyntheticMixSegDataset.synthetic_item)
LOADER_KEYS = ("batch_size", "num_workers", "persistent_workers", "sampler", "collate_fn")


def is_synthetic(data_sample) -> bool:
    return str(data_sample.metainfo.get("img_path", "")).startswith(SYNTHETIC_PATH_PREFIX)


@HOOKS.register_module()
class SyntheticPoolHook(Hook):
    """Grows the pool, follows training for the mix's draw, and shows what the model is fed.

    With `SynthaugBatchSampler` (what wrap-config writes) the store's new samples are adopted at each epoch's
    start and the plan is saved in checkpoints; without it, every `interval` iterations (same snapshot on every
    rank). Every
    iteration it tells the mix the iteration (ratio schedules) and the pass over the data (the epoch's
    draw), and puts in the message hub, where mmengine's logger prints them from the first logging
    interval: `synthaug_synthetic_share` (counted from the batches trained on, all ranks), pool size,
    served and skipped samples. The consumed counts are saved in checkpoints and restored on resume.
    Every `vis_interval` iterations (0: never) a grid of the batch's synthetic samples with their label
    overlays goes to the runner's visualiser backends (`synthaug_samples`). Every `class_log_interval`
    iterations (0: never) the log gets each class's synthetic share of the labelled pixels trained on
    since the last such line, and, with the loss filter on, the share of synthetic pixels it ignored.
    """

    priority = "NORMAL"

    def __init__(
        self,
        interval: int = 50,
        log_interval: int = 1,
        vis_interval: int = 0,
        vis_max: int = 8,
        class_log_interval: int = 500,
    ) -> None:
        for key, value, least in (
            ("interval", interval, 1),
            ("log_interval", log_interval, 1),
            ("vis_interval", vis_interval, 0),
            ("class_log_interval", class_log_interval, 0),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"SyntheticPoolHook: {key}={value!r} must be an integer >= {least}")
        self.interval, self.log_interval, self.vis_interval, self.vis_max = (
            interval,
            log_interval,
            vis_interval,
            vis_max,
        )
        self.mix: SyntheticMixDataset | None = None
        self._images_per_iter = 1
        self.refresh_ms = 0.0
        self.consumed = ConsumedTally()
        self._offsets: dict[str, float] = {}
        self.class_log_interval = class_log_interval
        self._class_pixels: torch.Tensor | None = None  # (2, classes): synthetic and all labelled pixels

    def before_train(self, runner) -> None:
        loader = runner.train_dataloader
        self.mix = find_mix(loader.dataset)
        if self.mix is None:
            runner.logger.warning("SyntheticPoolHook: the training dataset holds no synthaug mix; nothing to do")
            return
        world = runner.world_size if hasattr(runner, "world_size") else 1
        self._images_per_iter = (loader.batch_size or getattr(loader.batch_sampler, "batch_size", 1)) * world
        self.mix.follow(runner.iter, self._images_per_iter)
        runner.logger.info(
            f"synthaug: mixing {self.mix.n_real} real and {self.mix.n_synthetic} synthetic slots per pass "
            f"(ratio {self.mix.schedule.max}), pool {self.mix.pool_size}"
        )
        if not self.mix.planned:
            runner.logger.warning(
                "synthaug: train_dataloader has no batch_sampler=dict(type='SynthaugBatchSampler'), so the draw "
                "follows this hook's clock while DataLoader workers prefetch ahead of it: two runs may differ and "
                "a resumed run re-draws. Add it (`synthaug wrap-config` writes it) for a planned, checkpointed draw."
            )
        for line in loader_differences(runner.cfg):
            runner.logger.warning(line)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.mix is None:
            return
        if self.mix.refresh_due(runner.iter, self.interval):
            t0 = time.perf_counter()
            self.mix.refresh()
            self.refresh_ms = 1000 * (time.perf_counter() - t0)
        self.mix.follow(runner.iter, self._images_per_iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.mix is None:
            return
        samples = (data_batch or {}).get("data_samples", [])
        flags = [is_synthetic(s) for s in samples]
        self.consumed.add(*all_ranks_sum(sum(flags), len(flags)))
        if self.class_log_interval:
            self._count_class_pixels(runner, samples, flags)
        if self.vis_interval and (runner.iter + 1) % self.vis_interval == 0 and any(flags):
            self._show(runner, data_batch, flags)
        if (runner.iter + 1) % self.log_interval:
            return
        c = self.mix.counters()
        hub = runner.message_hub
        for key in (k for k in LOGGED_COUNTERS if k in c):
            hub.update_scalar(f"train/synthaug_{key}", float(c[key]) + self._offsets.get(key, 0.0))
        hub.update_scalar("train/synthaug_synthetic_share", self.consumed.share)
        hub.update_scalar("train/synthaug_consumed_synthetic", float(self.consumed.synthetic))
        hub.update_scalar("train/synthaug_refresh_ms", self.refresh_ms)

    def _count_class_pixels(self, runner, samples: list, flags: list[bool]) -> None:
        """Tally labelled pixels per class (synthetic and all) from the batch; log the shares every interval."""
        classes = list(runner.train_dataloader.dataset.metainfo.get("classes", ()))
        if not classes:
            return
        if self._class_pixels is None:
            self._class_pixels = torch.zeros(2, len(classes), dtype=torch.float64)
        for sample, synthetic in zip(samples, flags):
            seg = getattr(getattr(sample, "gt_sem_seg", None), "data", None)
            if seg is None:
                continue
            seg = seg.flatten().long().cpu()
            counts = torch.bincount(seg[seg < len(classes)], minlength=len(classes)).double()
            self._class_pixels[1] += counts
            if synthetic:
                self._class_pixels[0] += counts
        if (runner.iter + 1) % self.class_log_interval:
            return
        synthetic, total = self._class_pixels
        shares = ", ".join(
            f"{name} {s / t:.2f}" for name, s, t in zip(classes, synthetic.tolist(), total.tolist()) if t > 0
        )
        line = f"synthaug: synthetic share of labelled pixels per class (last {self.class_log_interval} iterations): {shares}"
        c = self.mix.counters() if self.mix is not None else {}
        if "ignored_share" in c:
            line += f"; the loss filter ignored {c['ignored_share']:.1%} of synthetic pixels served, left out {c['filtered_out']} samples"
        runner.logger.info(line)
        self._class_pixels.zero_()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self.mix is None:
            return
        c = self.mix.counters()
        served = {
            k: float(c[k]) + self._offsets.get(k, 0.0) for k in ("served_real", "served_synthetic", "corrupt_skipped")
        }
        checkpoint["synthaug"] = {"consumed": self.consumed.state_dict(), "served": served, **self.mix.plan_state()}

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        state = checkpoint.get("synthaug")
        if state:  # counters go on from where the saved run was, not from 0; planned epochs keep their snapshots
            self.consumed.load_state_dict(state.get("consumed", {}))
            self._offsets = dict(state.get("served", {}))
            mix = self.mix or find_mix(runner.train_dataloader.dataset)
            if mix is not None and "plan" in state:
                mix.load_plan_state(state)

    def _show(self, runner, data_batch: dict, flags: list[bool]) -> None:
        """A grid of the batch's synthetic inputs (as the model gets them) with their labels overlaid."""
        meta = runner.train_dataloader.dataset.metainfo
        palette = meta.get("palette") or [[(37 * i) % 256, (91 * i) % 256, (151 * i) % 256] for i in range(256)]
        classes = [str(c).strip().lower() for c in meta.get("classes", ())]
        background = classes.index("background") if "background" in classes else None
        tiles = []
        for inputs, sample, synthetic in zip(data_batch["inputs"], data_batch["data_samples"], flags):
            if synthetic and len(tiles) < self.vis_max:
                image = inputs.detach().cpu().numpy().transpose(1, 2, 0)[..., ::-1]  # BGR CHW -> RGB HWC
                mask = sample.gt_sem_seg.data[0].cpu().numpy().astype(np.uint8)
                tiles.append(
                    overlay(np.ascontiguousarray(image).astype(np.uint8), mask, palette, background_id=background)
                )
        size = max(max(t.shape[:2]) for t in tiles)
        tiles = [
            np.pad(t, ((0, size - t.shape[0]), (0, size - t.shape[1]), (0, 0)), constant_values=255) for t in tiles
        ]
        runner.visualizer.add_image(
            "synthaug_samples", contact_sheet(tiles, columns=min(4, len(tiles))), step=runner.iter + 1
        )


def all_ranks_sum(*values: int) -> tuple[int, ...]:
    """Sum small counts over every rank (a no-op outside distributed training)."""
    import torch

    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    from mmengine.dist import all_reduce

    t = torch.tensor(values, dtype=torch.int64)
    all_reduce(t)
    return tuple(int(v) for v in t.tolist())


def loader_differences(cfg) -> list[str]:
    """Warnings for a drop-in that replaced the user's settings instead of adding to them.

    Appending the drop-in to a config as a second `train_dataloader = dict(...)` (or `custom_imports`,
    `custom_hooks`) replaces the first one whole; a config that inherits through `_base_` keeps it.
    Compares the run's train_dataloader with each base's, and finds names assigned twice in the file.
    """
    from mmengine.config import Config

    filename = getattr(cfg, "filename", None)
    if not filename or not str(filename).endswith(".py"):
        return []
    out = reassigned(Path(filename))
    try:
        bases = [Config._get_cfg_path(b, filename)[0] for b in Config._get_base_files(filename)]
        base_loaders = [Config.fromfile(b, import_custom_modules=False).get("train_dataloader") for b in bases]
    except Exception:  # a check that cannot read the bases must not stop training
        return out
    ours = cfg.get("train_dataloader") or {}
    for base, theirs in zip(bases, base_loaders):
        for key in LOADER_KEYS if theirs else ():
            if key in theirs and theirs.get(key) != ours.get(key):
                out.append(
                    f"synthaug: train_dataloader.{key} is {ours.get(key)!r} in {filename} but {theirs.get(key)!r} in "
                    f"its base {base}; if you did not mean to change it, make the mix config with "
                    "`synthaug wrap-config`, which inherits the loader settings"
                )
    return out


def reassigned(filename: Path) -> list[str]:
    """Warnings for top-level train_dataloader / custom_imports / custom_hooks assigned more than once."""
    try:
        tree = ast.parse(filename.read_text())
    except (OSError, SyntaxError):
        return []
    seen: dict[str, list[ast.expr]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in ("train_dataloader", "custom_imports", "custom_hooks"):
                    seen.setdefault(target.id, []).append(node.value)
    out = []
    for name, values in seen.items():
        if len(values) < 2:
            continue
        last = {k.arg for k in getattr(values[-1], "keywords", [])}
        lost = sorted({k.arg for v in values[:-1] for k in getattr(v, "keywords", []) if k.arg} - last)
        out.append(
            f"synthaug: {name} is assigned {len(values)} times in {filename}; the last replaces the others whole"
            + (f" (their {', '.join(lost)} are lost)" if lost else "")
            + ". Put the drop-in in a new config that names yours in _base_: `synthaug wrap-config CONFIG "
            "--store S --ratio R -o NEW_CONFIG` writes it"
        )
    return out


@HOOKS.register_module()
class SyntheticProducerHook(Hook):
    """Runs `synthaug produce` beside training on rank 0 (see synthaug.supervisor): started before training,
    restarted with back-off if it dies, stopped after the run. Its rate and state go to the message hub
    as `train/synthaug_producer_*`. Training never waits on it. It runs at lowered priority (`nice`), and
    on the CPU with `cpu_threads` torch threads, so that it does not starve the training run."""

    priority = "LOW"

    def __init__(self, store: str, log_interval: int = 10, **producer: Any) -> None:
        """`producer`: ProducerSupervisor's settings (config, device, target_pool, max_samples,
        retire_grace_s, cpu_threads, nice, score, hardness_bias), with its defaults. With
        score=dict(config=<this config>, work_dir=<this run's work dir>) the producer re-scores the store
        with each checkpoint the run saves, for a mix with loss_filter=True (see synthaug.scoring)."""
        self.kwargs = dict(store=store, **producer)
        self.log_interval = log_interval
        self.supervisor = None
        # Started here, when the runner builds its hooks, not in before_run: mmengine builds the training
        # dataset before before_run, and a mix waiting for its first samples (empty='wait') needs them.
        from mmengine.dist import get_rank

        from synthaug.supervisor import ProducerSupervisor

        if get_rank() == 0:
            from mmengine.logging import MMLogger

            self.supervisor = ProducerSupervisor(**self.kwargs, log_fn=MMLogger.get_current_instance().info)
            self.supervisor.start()

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.supervisor is None or (runner.iter + 1) % self.log_interval:
            return
        s = self.supervisor.status()
        hub = runner.message_hub
        hub.update_scalar("train/synthaug_producer_rate", float(s.get("rate", 0.0)))
        hub.update_scalar("train/synthaug_producer_restarts", float(s["restarts"]))
        hub.update_scalar("train/synthaug_producer_produced", float(s.get("produced", 0)))

    def before_val(self, runner) -> None:
        """With live scoring and the hardness bias, watch the validation IoU metric for per-class IoU (mmseg logs
        it as a table only) so that after_val_epoch can hand it to the producer (synthaug.scoring.class_weights)."""
        score = self.kwargs.get("score") or {}
        if self.supervisor is None or not (self.kwargs.get("hardness_bias") and score.get("work_dir")):
            return
        from mmseg.evaluation import IoUMetric

        for metric in getattr(getattr(runner.val_loop, "evaluator", None), "metrics", []):
            if isinstance(metric, IoUMetric):
                observe_class_iou(metric, self._record_class_iou)

    def _record_class_iou(self, class_iou: dict[str, float]) -> None:
        self._class_iou = class_iou

    _class_iou: dict[str, float] | None = None

    def after_val_epoch(self, runner, metrics=None) -> None:
        if self._class_iou:
            from synthaug.scoring import write_class_iou

            write_class_iou(self.kwargs["score"]["work_dir"], runner.iter, self._class_iou)
            self._class_iou = None

    def after_run(self, runner) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()


def observe_class_iou(metric, record) -> None:
    """Make an mmseg IoUMetric also pass each evaluation's per-class IoU (0..1, NaN where a class has no pixels)
    to `record`; what the metric computes and returns is unchanged, and observing it never fails a validation.
    Observing a metric again replaces the earlier observer."""
    compute = getattr(metric, "_synthaug_compute", metric.compute_metrics)

    def compute_metrics(results: list) -> dict:
        try:
            if results and not metric.format_only:
                intersect = sum(r[0] for r in results).double()
                union = sum(r[1] for r in results).double()
                iou = (intersect / union).tolist()  # 0/0 = NaN: a class absent from prediction and label
                record(dict(zip(metric.dataset_meta["classes"], iou)))
        except Exception as err:  # a metric subclass with other results: no per-class IoU, validation goes on
            from mmengine.logging import MMLogger

            MMLogger.get_current_instance().warning(f"synthaug: no per-class IoU from {type(metric).__name__}: {err}")
        return compute(results)

    metric._synthaug_compute = compute
    metric.compute_metrics = compute_metrics

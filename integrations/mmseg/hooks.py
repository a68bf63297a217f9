"""`SyntheticPoolHook`: grows the synthetic pool during training and logs what the mix served."""

from __future__ import annotations

from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from synthaug.mix import SyntheticMixDataset


def find_mix(dataset) -> SyntheticMixDataset | None:
    """The SyntheticMixDataset inside a (possibly wrapped) training dataset, if any."""
    seen = 0
    while dataset is not None and seen < 8:
        if isinstance(dataset, SyntheticMixDataset):
            return dataset
        dataset = getattr(dataset, "mix", None) or getattr(dataset, "dataset", None)
        seen += 1
    return None


@HOOKS.register_module()
class SyntheticPoolHook(Hook):
    """Every `interval` iterations, adopt the store's new samples (same snapshot on every rank), tell the
    mix the iteration (for ratio schedules) and the pass over the data (for the epoch's draw); every
    `log_interval` iterations, put synthetic share, pool size, served and skipped samples in the
    message hub, where mmengine's logger and visualiser show them as `train/synthaug_*`."""

    priority = "NORMAL"

    def __init__(self, interval: int = 50, log_interval: int = 10) -> None:
        if interval < 1 or log_interval < 1:
            raise ValueError("SyntheticPoolHook: interval and log_interval must be >= 1")
        self.interval, self.log_interval = interval, log_interval
        self.mix: SyntheticMixDataset | None = None
        self._per_pass = 1

    def before_train(self, runner) -> None:
        loader = runner.train_dataloader
        self.mix = find_mix(loader.dataset)
        if self.mix is None:
            runner.logger.warning("SyntheticPoolHook: the training dataset holds no synthaug mix; nothing to do")
            return
        world = runner.world_size if hasattr(runner, "world_size") else 1
        self._per_pass = max(1, len(self.mix) // max(1, loader.batch_size * world))
        self._tell(runner.iter)
        runner.logger.info(
            f"synthaug: mixing {self.mix.n_real} real and {self.mix.n_synthetic} synthetic slots per pass "
            f"(ratio {self.mix.schedule.max}), pool {self.mix.pool_size}"
        )

    def _tell(self, iteration: int) -> None:
        assert self.mix is not None
        self.mix.set_iteration(iteration)
        self.mix.set_epoch(iteration // self._per_pass)

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.mix is None:
            return
        if runner.iter and runner.iter % self.interval == 0:
            self.mix.refresh()
        self._tell(runner.iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.mix is None or (runner.iter + 1) % self.log_interval:
            return
        c = self.mix.counters()
        hub = runner.message_hub
        for key in ("synthetic_share", "pool_size", "served_synthetic", "served_real", "corrupt_skipped"):
            hub.update_scalar(f"train/synthaug_{key}", float(c[key]))

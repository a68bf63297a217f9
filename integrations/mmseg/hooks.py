"""`SyntheticPoolHook`: grows the synthetic pool during training and logs what the mix served."""

from __future__ import annotations

import time

from mmengine.hooks import Hook
from mmseg.registry import HOOKS

from synthaug.mix import LOGGED_COUNTERS, SyntheticMixDataset


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
        self._images_per_iter = 1
        self.refresh_ms = 0.0

    def before_train(self, runner) -> None:
        loader = runner.train_dataloader
        self.mix = find_mix(loader.dataset)
        if self.mix is None:
            runner.logger.warning("SyntheticPoolHook: the training dataset holds no synthaug mix; nothing to do")
            return
        world = runner.world_size if hasattr(runner, "world_size") else 1
        self._images_per_iter = loader.batch_size * world
        self.mix.follow(runner.iter, self._images_per_iter)
        runner.logger.info(
            f"synthaug: mixing {self.mix.n_real} real and {self.mix.n_synthetic} synthetic slots per pass "
            f"(ratio {self.mix.schedule.max}), pool {self.mix.pool_size}"
        )

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if self.mix is None:
            return
        if runner.iter and runner.iter % self.interval == 0:
            t0 = time.perf_counter()
            self.mix.refresh()
            self.refresh_ms = 1000 * (time.perf_counter() - t0)
        self.mix.follow(runner.iter, self._images_per_iter)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.mix is None or (runner.iter + 1) % self.log_interval:
            return
        c = self.mix.counters()
        hub = runner.message_hub
        for key in LOGGED_COUNTERS:
            hub.update_scalar(f"train/synthaug_{key}", float(c[key]))
        hub.update_scalar("train/synthaug_refresh_ms", self.refresh_ms)


@HOOKS.register_module()
class SyntheticProducerHook(Hook):
    """Runs `synthaug produce` beside training on rank 0 (see synthaug.supervisor): started before training,
    restarted with back-off if it dies, stopped after the run. Its rate and state go to the message hub
    as `train/synthaug_producer_*`. Training never waits on it. It runs at lowered priority (`nice`), and
    on the CPU with `cpu_threads` torch threads, so that it does not starve the training run."""

    priority = "LOW"

    def __init__(
        self,
        store: str,
        config: str | None = None,
        device: str = "cpu",
        target_pool: int | None = None,
        max_samples: int | None = None,
        log_interval: int = 10,
        retire_grace_s: float = 600.0,
        cpu_threads: int = 1,
        nice: int = 10,
    ) -> None:
        self.kwargs = dict(
            store=store,
            config=config,
            device=device,
            target_pool=target_pool,
            max_samples=max_samples,
            retire_grace_s=retire_grace_s,
            cpu_threads=cpu_threads,
            nice=nice,
        )
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

    def after_run(self, runner) -> None:
        if self.supervisor is not None:
            self.supervisor.stop()

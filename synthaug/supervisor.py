"""The producer supervisor that the integrations' hooks use: start, watch, restart with back-off, stop.

Training never waits on it and never fails because of it: every action is guarded and logged,
the producer runs as a separate process (`synthaug produce`), and a watcher thread restarts
it with exponential back-off if it dies. Only one rank should run it (the hooks see to that).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from synthaug.producer import read_status

log = logging.getLogger(__name__)


class ProducerSupervisor:
    """Keeps one `synthaug produce` process alive for the length of a training run."""

    def __init__(
        self,
        store: str | Path,
        config: str | Path | None = None,
        device: str = "cpu",
        target_pool: int | None = None,
        max_samples: int | None = None,
        segment: str = "producer-supervised",
        retire_grace_s: float = 600.0,
        backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
        log_fn: Callable[[str], None] | None = None,
        extra_env: dict[str, str] | None = None,
        cpu_threads: int = 1,
        nice: int = 10,
        score: dict[str, Any] | None = None,
        hardness_bias: bool = False,
    ) -> None:
        """`score`: dict(config=the training config, work_dir=its work dir, every=N batches, margin=1.25,
        min_probability=None (the rule's floor; None: the model kind's default),
        framework='mmseg'|'detectron2', classes=the model's class names, class_map=the mix's class map where
        needed): the producer re-scores the store with each new checkpoint. `hardness_bias`: it prompts for hard
        classes more."""
        self.store, self.config, self.device = Path(store), config, device
        self.target_pool, self.max_samples, self.segment = target_pool, max_samples, segment
        self.retire_grace_s = retire_grace_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.log = log_fn or log.info
        self.extra_env = extra_env or {}
        # A CPU producer shares the cores with the training run: with as many threads as cores and
        # the same priority it slowed mmseg's iterations 60x (measured); one low-priority thread does not.
        self.cpu_threads, self.nice = cpu_threads, nice
        keys = {"config", "work_dir", "every", "margin", "min_probability", "framework", "classes", "class_map"}
        unknown = set(score or {}) - keys
        if score is not None and (unknown or not {"config", "work_dir"} <= set(score)):
            raise ValueError(
                f"score={score}: give dict(config=<training config>, work_dir=<its work dir>, every=1, margin=1.25)"
                + (f"; unknown keys {sorted(unknown)}" if unknown else "")
            )
        if score is not None:
            from synthaug.scoring import FilterRule

            try:
                FilterRule(margin=score.get("margin", 1.25), min_probability=score.get("min_probability"))
            except (TypeError, ValueError) as err:
                raise ValueError(f"score={score}: {err}") from None
        self.score, self.hardness_bias = dict(score or {}), hardness_bias
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.state = "idle"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._logfile = None

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "synthaug.cli", "produce", "--store", str(self.store), "--device", self.device]
        cmd += ["--segment", self.segment, "--retire-grace", str(self.retire_grace_s), "--parent-pid", str(os.getpid())]
        if self.config:
            cmd += ["--config", str(self.config)]
        if self.target_pool:
            cmd += ["--target-pool", str(self.target_pool)]
        if self.max_samples:
            cmd += ["--max-samples", str(self.max_samples)]
        if self.device == "cpu" and self.cpu_threads:
            cmd += ["--threads", str(self.cpu_threads)]
        if self.nice:
            cmd += ["--nice", str(self.nice)]
        if self.score:
            cmd += ["--score-config", str(self.score["config"]), "--score-work-dir", str(self.score["work_dir"])]
            cmd += ["--score-every", str(self.score.get("every", 1)), "--margin", str(self.score.get("margin", 1.25))]
            cmd += ["--score-framework", str(self.score.get("framework", "mmseg"))]
            if self.score.get("min_probability") is not None:
                cmd += ["--min-probability", repr(float(self.score["min_probability"]))]
            if self.score.get("classes"):
                cmd += ["--score-classes", json.dumps(list(self.score["classes"]))]  # names may hold commas
            for name, target in dict(self.score.get("class_map") or {}).items():
                cmd += ["--score-class-map", f"{name}={'' if target is None else target}"]
        if self.hardness_bias:
            cmd += ["--hardness-bias"]
        return cmd

    def _launch(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        if self._logfile is None:
            self._logfile = open(self.store / f"{self.segment}.producer.log", "a")  # noqa: SIM115
        env = {**os.environ, **self.extra_env}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)  # the producer is not part of the training job's process group
        self.proc = subprocess.Popen(
            self.command(), stdout=self._logfile, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self.state = "running"
        self.log(f"synthaug producer started (pid {self.proc.pid}, segment {self.segment}, device {self.device})")

    def start(self) -> None:
        """Launch the producer and its watcher thread; never raises (a failure is logged and retried)."""
        try:
            self._launch()
        except Exception as err:
            self.log(f"synthaug producer failed to start: {err}; will retry")
            self.state = "failed"
        self._thread = threading.Thread(target=self._watch, name="synthaug-supervisor", daemon=True)
        self._thread.start()
        atexit.register(self.stop)  # a training process that dies never leaves its producer behind

    def _watch(self) -> None:
        delay = self.backoff_s
        while not self._stop.is_set():
            proc = self.proc
            code = None if proc is None else proc.poll()
            if proc is not None and code is None:
                self._stop.wait(0.5)
                continue
            if code == 0:  # finished its --max-samples
                self.state = "finished"
                self.log("synthaug producer finished")
                return
            self.state = "restarting"
            self.log(f"synthaug producer exited with {code}; restarting in {delay:.0f} s")
            if self._stop.wait(delay):
                return
            delay = min(delay * 2, self.max_backoff_s)
            try:
                self._launch()
                self.restarts += 1
            except Exception as err:
                self.log(f"synthaug producer failed to restart: {err}")

    def status(self) -> dict[str, Any]:
        """State, restarts and the producer's own figures (samples produced, rate in samples/s)."""
        out: dict[str, Any] = {"state": self.state, "restarts": self.restarts}
        s = read_status(self.store, self.segment)
        if s:
            out.update(produced=s.get("produced", 0), rate=s.get("rate", 0.0), producer_state=s.get("state"))
        return out

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the producer to finish its batch (SIGTERM), then kill it after `timeout`; never raises."""
        if self.state in ("stopped", "idle"):
            return
        self._stop.set()
        proc = self.proc
        try:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            self.state = "stopped"
            self.log(f"synthaug producer stopped ({self.restarts} restarts)")
        except Exception as err:
            self.log(f"synthaug producer did not stop cleanly: {err}")
        finally:
            if self._thread is not None:
                self._thread.join(5)
            if self._logfile is not None:
                self._logfile.close()
                self._logfile = None

"""The online producer: generates into its own store segment while training reads the store.

`synthaug produce --config gen.yaml --store STORE [--device cuda:N] [--target-pool N] [--max-samples N]`

- It loads the model once and generates batch after batch into its own segment (resumed after
  a restart, with fresh seeds), until `--max-samples` or a stop signal.
- SIGTERM or SIGINT: it finishes the batch in hand and stops; a second signal abandons the batch
  at once. Samples are written atomically, so either way no partial sample becomes visible.
- With `--target-pool N` the pool rolls: after each batch it retires its own oldest samples so
  that the store's live samples stay at N or fewer. Retired files are deleted only after
  `--retire-grace` seconds, so a reader holding an older snapshot can still read them.
- Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK set), each process takes its own segment
  (`<name>-rank<R>`), a distinct seed range and, for `--device cuda`, the GPU of its local rank.
- Started by a supervisor (`--parent-pid`), it stops when that process is gone.
- It writes its state and rate to `STORE/producers/<segment>.json` for the supervisor to log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

from synthaug.config import GenerationConfig
from synthaug.imageio import atomic_write_bytes
from synthaug.scoring import LiveScorer, LiveScoring

STATUS_DIR = "producers"
SEEDS_PER_RANK = 1_000_000_000


def worker_identity() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun/accelerate's environment; (0, 1, 0) when launched alone."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def status_path(store: str | Path, segment: str) -> Path:
    return Path(store) / STATUS_DIR / f"{segment}.json"


def process_alive(pid: int, host: str | None) -> bool | None:
    """Whether process `pid` runs on this machine; None when the status was written on another host."""
    if host is not None and host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def read_status(store: str | Path, segment: str) -> dict[str, Any] | None:
    """The producer's last status (state, produced, retired, rate, pid, host, updated), or None.

    A status that says the producer runs while its pid is gone (killed, crashed: it had no chance to
    write 'stopped') reads as state 'dead', with the state it last wrote in 'was'.
    """
    try:
        data = json.loads(status_path(store, segment).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    pid, running = data.get("pid"), data.get("state") != "stopped"
    if running and isinstance(pid, int) and process_alive(pid, data.get("host")) is False:
        data["was"], data["state"] = data.get("state"), "dead"
    return data


class Producer:
    """One producer process: model loaded once, batches into one segment, optional rolling pool."""

    def __init__(
        self,
        cfg: GenerationConfig,
        store: str | Path,
        device: str | None = None,
        target_pool: int | None = None,
        max_samples: int | None = None,
        segment: str | None = None,
        retire_grace_s: float = 600.0,
        parent_pid: int | None = None,
        scoring: LiveScoring | None = None,
        hardness_bias: bool = False,
        hardness_cap: float = 3.0,
    ) -> None:
        """`scoring`: re-score the store with each new checkpoint of a training run (synthaug.scoring).
        `hardness_bias`: prompt for classes by their hardness in the newest scores (capped at `hardness_cap`
        times the mean), picking a batch's prompts from four times as many candidates."""
        if target_pool is not None and target_pool < cfg.batch_size:
            raise ValueError(f"--target-pool {target_pool} must be at least the batch size ({cfg.batch_size})")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"--max-samples {max_samples} must be >= 1")
        rank, world, local_rank = worker_identity()
        base = segment or cfg.segment or f"producer-{socket.gethostname()}"
        self.segment = f"{base}-rank{rank}" if world > 1 else base
        if device is None:
            device = cfg.device
        if device == "cuda" and world > 1:
            device = f"cuda:{local_rank}"
        self.cfg = dataclasses.replace(cfg, device=device)
        self.store = Path(store)
        self.target_pool, self.max_samples, self.retire_grace_s = target_pool, max_samples, retire_grace_s
        self.seed_base = cfg.seed + rank * SEEDS_PER_RANK
        self.parent_pid = parent_pid
        self.stops = 0
        self.produced = 0
        self.retired = 0
        self.rate = 0.0
        self.scorer = LiveScorer(store, scoring) if scoring is not None else None
        self.hardness_bias, self.hardness_cap = hardness_bias, hardness_cap
        if hardness_cap < 1:
            raise ValueError(f"--hardness-cap {hardness_cap} must be >= 1")
        self.class_counts: Counter[str] = Counter()  # classes prompted for, for the status file
        self.batches = 0
        self._scores = None  # the scores file last read for the hardness bias (re-read only when a newer appears)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stops += 1
        if self.stops >= 2:  # a second signal: abandon the batch now (the store never shows a partial sample)
            self._status("stopped")
            raise SystemExit(128 + signum)

    def _status(self, state: str) -> None:
        data = {
            "segment": self.segment,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "state": state,
            "produced": self.produced,
            "retired": self.retired,
            "rate": round(self.rate, 4),
            "device": self.cfg.device,
            "updated": time.time(),
            "prompt_class_counts": dict(self.class_counts),
            "scoring_passes": self.scorer.runs if self.scorer else 0,
        }
        path = status_path(self.store, self.segment)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(data).encode())

    def run(self) -> int:
        """Produce until the target count or a stop signal; returns how many samples this run wrote."""
        from synthaug.annotators import build_annotator, prepare_annotator
        from synthaug.generation_job import samples_from_config
        from synthaug.generator import check_model_before_load, load_model
        from synthaug.store import SampleStore, StoreWriter, create_store

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        cfg = self.cfg
        annotator = build_annotator(cfg.method, cfg.annotator)
        vocab = cfg.class_vocabulary()
        prepare_annotator(annotator, vocab=vocab)
        check_model_before_load(
            cfg.model, cfg.height, cfg.width, layout=cfg.layout is not None, config=cfg.model_config
        )
        create_store(self.store, vocab, image_format=cfg.image_format)
        self._status("loading")
        model = load_model(
            cfg.model, device=cfg.device, scheduler=cfg.scheduler, loras=cfg.lora_weights(), config=cfg.model_config
        )
        prepare_annotator(annotator, model=model)
        reader = SampleStore(self.store)
        with StoreWriter(self.store, segment=self.segment, resume=True) as writer:
            while not self.stops and (self.max_samples is None or self.produced < self.max_samples):
                if self.parent_pid and os.getppid() != self.parent_pid:
                    break  # the training process that supervised us is gone: do not run on as an orphan
                n = cfg.batch_size
                if self.max_samples is not None:
                    n = min(n, self.max_samples - self.produced)
                specs = self._prompts(n, self.seed_base + writer.count, vocab)
                self._status("producing")
                t0 = time.perf_counter()
                for sample in samples_from_config(cfg, model, specs, annotator, batch_size=n):
                    writer.add(sample)
                    self.produced += 1
                self.rate = n / max(time.perf_counter() - t0, 1e-9)
                if self.target_pool is not None:
                    self._roll(reader)
                self.batches += 1
                if self.scorer is not None and self.batches % self.scorer.settings.every == 0:
                    self._status("scoring")
                    self.scorer.poll()
                self._status("producing")
        self._status("stopped")
        return self.produced

    def _prompts(self, n: int, seed: int, vocab) -> list:
        """The next batch's prompts: fresh seeds after a restart (the segment's count moves `seed` on); with the
        hardness bias, `n` of 4n candidates picked by class weight (see synthaug.scoring.class_weights), from the
        store's newest scores and, with live scoring, the training run's latest validation IoU."""
        from synthaug.prompts import bias_prompts
        from synthaug.scoring import Scores, class_weights, read_class_iou, store_class_iou

        cfg = dataclasses.replace(self.cfg, seed=seed)
        weights = {}
        if self.hardness_bias:
            self._scores = Scores.newest(self.store, vocab.names, known=self._scores)
            iou = {}
            if self.scorer is not None:  # the trainer's validation, in its dataset's class names
                live = self.scorer.settings
                iou = store_class_iou(read_class_iou(live.work_dir), vocab, live.class_map)
            weights = class_weights(self._scores, self.hardness_cap, iou)
        specs = bias_prompts(cfg.prompt_specs(4 * n), weights, vocab, n, seed) if weights else cfg.prompt_specs(n)
        self.class_counts.update(vocab.names[t.class_id] for s in specs for t in s.targets)
        return specs

    def _roll(self, reader) -> None:
        """Retire this segment's oldest live samples beyond the target; purge files retired past the grace."""
        from synthaug.store import record_position, record_segment, retire

        reader.refresh()
        excess = len(reader.records) - (self.target_pool or 0)
        if excess > 0:
            mine = sorted((r for r in reader.records if record_segment(r) == self.segment), key=record_position)[
                :excess
            ]
            self.retired += retire(self.store, [r["id"] for r in mine])
            reader.refresh()
        self._purge(reader)

    def _purge(self, reader) -> None:
        """Delete the files of this segment's samples retired more than retire_grace_s ago and seen retired by
        every live reader's snapshot (their leases, see synthaug.store.write_reader_lease), so no reader that
        may still hold one loses its files. `reader` must be refreshed."""
        from synthaug.store import reader_floor, record_segment

        cutoff = time.time() - self.retire_grace_s
        floor = reader_floor(self.store)
        old = {rid for rid, when in reader.retired_at.items() if when <= cutoff}
        for rec in reader.all_records:
            rid = rec["id"]
            if rid not in old or record_segment(rec) != self.segment:
                continue
            if floor is not None and reader.retired.get(rid, 0) > floor:
                continue  # a live reader's snapshot predates this retirement: it may still read the sample
            for key in ("image", "mask"):
                (self.store / rec[key]).unlink(missing_ok=True)

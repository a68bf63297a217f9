"""Loss filtering with a real mmseg model: `synthaug score` on planted noise, then tools/train.py using the scores."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mmseg")

from test_mmseg import MIX_CONFIG, REAL_CONFIG, scalar, train

from synthaug.scoring import Scores
from synthaug.store import SampleStore
from synthaug.toy.planted import write_planted_store
from synthaug.toy.world import TOY_VOCABULARY
from synthaug.vocabulary import ClassVocabulary

NAMES = list(TOY_VOCABULARY.names)
TRAIN_ITERS = 400


def plant(store: Path, n: int, vocabulary=TOY_VOCABULARY) -> dict[str, np.ndarray]:
    """`n` toy renders whose masks have an 8x8 block of background painted 'circle'; the planted pixels by id."""
    return write_planted_store(store, n, vocabulary=vocabulary)


def score(store: Path, checkpoint: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "synthaug.cli",
        "score",
        str(store),
        "--config",
        str(REAL_CONFIG),
        "--checkpoint",
        str(checkpoint),
        *extra,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONWARNINGS": "ignore"}
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A toy FCN trained by mmseg's tools/train.py on 200 real toy images for TRAIN_ITERS iterations."""
    from synthaug.cli import main as cli

    root = tmp_path_factory.mktemp("scoring")
    assert cli(["toy-data", "--out", str(root / "data" / "toy"), "--train", "200", "--val", "20", "--test", "0"]) == 0
    r = train(
        root,
        REAL_CONFIG,
        f"train_cfg.max_iters={TRAIN_ITERS}",
        f"train_cfg.val_interval={TRAIN_ITERS}",
        f"param_scheduler.0.end={TRAIN_ITERS}",
        f"default_hooks.checkpoint.interval={TRAIN_ITERS}",
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root


@pytest.mark.slow
def test_filtering_removes_planted_noise_and_training_uses_it(trained):
    """Planted wrong pixels: at least 80% ignored, at most 10% of the right ones; then the mix trains with them."""
    store = trained / "data" / "toy_store"
    planted = plant(store, 48)
    checkpoint = trained / "work" / f"iter_{TRAIN_ITERS}.pth"
    r = score(store, checkpoint)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    scores = Scores.newest(store, NAMES)
    assert scores is not None and scores.header["checkpoint"] == str(checkpoint.resolve())
    st = SampleStore(store)
    removed = right_removed = n_planted = n_right = 0
    for rec in st:
        sample = st.read_record(rec)
        ignored = scores.apply(sample).mask == 255
        wrong = planted[rec["id"]]
        removed += int((ignored & wrong).sum())
        n_planted += int(wrong.sum())
        right_removed += int((ignored & ~wrong).sum())
        n_right += int((~wrong).sum())
    assert n_planted > 1000
    print(f"planted removed {removed / n_planted:.3f}, right removed {right_removed / n_right:.3f}")
    assert removed / n_planted >= 0.80
    assert right_removed / n_right <= 0.10
    assert scores.header["rule"]["min_probability"] == 0.1  # a semantic model's default floor

    # --min-probability reaches the rule: the first default (0.5) ignores more right pixels, on top of these
    r = score(store, checkpoint, "--min-probability", "0.5", "--tag", "floor-0.5")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    loose = Scores.newest(store, NAMES)
    assert loose.header["rule"]["min_probability"] == 0.5 and loose.path != scores.path
    more = sum(int((loose.apply(st.read_record(rec)).mask == 255).sum()) for rec in st)
    assert more > removed + right_removed
    r = score(store, checkpoint, "--min-probability", "1.5")
    assert r.returncode != 0 and "min_probability=1.5 must be a number in (0, 1]" in r.stderr
    assert Scores.newest(store, NAMES).path == loose.path  # a refused rule writes nothing
    (loose.path).unlink()  # the mix below reads the default rule's scores

    r = train(
        trained,
        MIX_CONFIG,
        "train_cfg.max_iters=20",
        "train_cfg.val_interval=20",
        "default_hooks.logger.interval=5",
        "train_dataloader.dataset.loss_filter=True",
        "train_dataloader.dataset.max_ignored=0.2",
        "train_dataloader.dataset.policy=hardness",
        "custom_hooks.0.class_log_interval=10",
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = r.stdout + r.stderr
    assert 0.0 < scalar(log, "synthaug_ignored_share") < 0.5
    expected_out = sum(s.ignored_share > 0.2 for s in scores.by_id.values())
    assert scalar(log, "synthaug_filtered_out") == expected_out
    lines = [ln for ln in log.splitlines() if "synthetic share of labelled pixels per class" in ln]
    assert len(lines) == 2, log[-3000:]  # iterations 10 and 20
    shares = dict(re.findall(r"(\w+) (\d\.\d\d)", lines[-1].split("(last 10 iterations): ")[1]))
    assert set(shares) == set(NAMES) and all(0 <= float(v) <= 1 for v in shares.values())
    assert f"left out {expected_out} samples" in lines[-1]


@pytest.mark.slow
def test_a_checkpoint_of_other_classes_is_refused_naming_both(trained, tmp_path):
    other = ClassVocabulary(["background", "dog", "cat", "bird"], palette=TOY_VOCABULARY.palette)
    plant(tmp_path / "other", 2, other)
    r = score(tmp_path / "other", trained / "work" / f"iter_{TRAIN_ITERS}.pth")
    assert r.returncode == 2
    assert (
        "the checkpoint's classes ['background', 'circle', 'square', 'triangle'] differ from the store's "
        "['background', 'dog', 'cat', 'bird']"
    ) in r.stderr
    assert not (tmp_path / "other" / "scores").exists() or os.listdir(tmp_path / "other" / "scores") == []


@pytest.mark.slow
def test_live_scorer_scores_each_new_checkpoint_once(trained, tmp_path):
    """What the producer runs between batches: a new checkpoint named by last_checkpoint is scored once."""
    import shutil

    from synthaug.scoring import LiveScorer, LiveScoring

    store = tmp_path / "store"
    plant(store, 4)
    work = tmp_path / "work"
    work.mkdir()
    live = LiveScorer(store, LiveScoring(REAL_CONFIG, work))
    assert live.poll() is None  # no checkpoint yet
    shutil.copy(trained / "work" / f"iter_{TRAIN_ITERS}.pth", work / "iter_10.pth")
    (work / "last_checkpoint").write_text(str(work / "iter_10.pth"))
    first = live.poll()
    assert first is not None and Scores.newest(store, NAMES).path == first
    assert live.poll() is None and live.runs == 1
    shutil.copy(work / "iter_10.pth", work / "iter_20.pth")
    (work / "last_checkpoint").write_text("iter_20.pth")  # detectron2 writes a name relative to its output dir
    second = live.poll()
    assert second is not None and second != first and live.runs == 2
    (work / "iter_30.pth").write_bytes(b"not a checkpoint")
    (work / "last_checkpoint").write_text(str(work / "iter_30.pth"))
    assert live.poll() is None and live.poll() is None  # logged once, not retried, the producer goes on
    assert Scores.newest(store, NAMES).path == second


def test_observed_iou_metric_reports_per_class_iou_and_computes_what_it_did():
    """The producer hook's view of mmseg's IoUMetric: per-class IoU from the evaluation's own totals, while the
    metric's returned figures stay mmseg's."""
    import copy

    import torch
    from mmseg.evaluation import IoUMetric
    from synthaug.integrations.mmseg.hooks import observe_class_iou

    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": ("background", "circle", "square")}
    # per image: intersect, union, predicted area, label area, per class
    results = [
        tuple(torch.tensor(v, dtype=torch.float64) for v in ([8, 1, 0], [10, 4, 0], [9, 2, 0], [9, 3, 0])),
        tuple(torch.tensor(v, dtype=torch.float64) for v in ([2, 1, 0], [10, 4, 0], [5, 3, 0], [7, 2, 0])),
    ]
    plain = copy.deepcopy(metric).compute_metrics(copy.deepcopy(results))
    seen = []
    observe_class_iou(metric, seen.append)
    assert metric.compute_metrics(results) == plain
    assert seen[0]["background"] == pytest.approx(0.5) and seen[0]["circle"] == pytest.approx(0.25)
    assert np.isnan(seen[0]["square"])  # no pixels of it in prediction or label

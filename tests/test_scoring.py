"""Loss-based noise filtering (synthaug.scoring): the rule, the scores file, and how the pool and mix use it.

The model here is an exact one: its per-pixel loss is the cross-entropy of a model that knows the true
toy masks (low where the stored label is right, high where it is wrong). The real mmseg scorer on a
trained model is tested in tests/integrations/test_mmseg_scoring.py.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from synthaug import rle
from synthaug.mix import SyntheticMixDataset
from synthaug.pool import PoolParams, SyntheticPool, hardness_weights
from synthaug.sample import Sample
from synthaug.scoring import (
    SCORES_KEY,
    FilterRule,
    Scores,
    class_lut,
    class_weights,
    judge,
    loss_histograms,
    score_store,
)
from synthaug.store import SampleStore, StoreWriter, create_store
from synthaug.toy.world import TOY_VOCABULARY, render_seed

NAMES = list(TOY_VOCABULARY.names)
SIZE = 24
RIGHT, WRONG = 0.05, 4.0  # losses of a confident model where the label is right / wrong


def planted(seed: int) -> tuple[Sample, np.ndarray]:
    """A toy render whose mask has a 6x6 block of background relabelled 'circle' (the planted noise)."""
    sample = render_seed(seed, SIZE).to_sample()
    truth = sample.mask.copy()
    block = np.zeros_like(truth, bool)
    block[:6, :6] = True
    noise = block & (truth == 0)
    sample.mask = truth.copy()
    sample.mask[noise] = NAMES.index("circle")
    return sample, truth


class ExactModel:
    """A LossModel that knows every sample's true mask: loss RIGHT where the label is true, WRONG elsewhere."""

    def __init__(self, truths: dict[int, np.ndarray], classes=NAMES, fail_after: int | None = None) -> None:
        self.truths, self.classes, self.name, self.task = truths, list(classes), "exact", "sem_seg"
        self.calls, self.fail_after = 0, fail_after

    def pixel_loss(self, samples: list[Sample]) -> list[np.ndarray]:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("scorer died")
        lut = class_lut(TOY_VOCABULARY, self.classes)
        out = []
        for s in samples:
            truth = lut[self.truths[s.seed]]
            out.append(np.where(s.mask == truth, RIGHT, WRONG).astype(np.float32))
        return out


@pytest.fixture
def noisy(tmp_path) -> tuple[Path, dict[int, np.ndarray], dict[str, np.ndarray]]:
    """A store of 12 planted samples; (store, truth by seed, planted-noise pixels by sample id)."""
    store = create_store(tmp_path / "store", TOY_VOCABULARY)
    truths, noise = {}, {}
    with StoreWriter(store, "gen0", fsync=False) as w:
        for seed in range(12):
            sample, truth = planted(seed)
            rec = w.add(sample)
            truths[seed] = truth
            noise[rec["id"]] = sample.mask != truth
    return store, truths, noise


def test_rule_thresholds_follow_class_medians_with_a_floor():
    rule = FilterRule(margin=1.5, min_probability=math.exp(-0.5))
    ids = np.array([0] * 5 + [1] * 5)
    loss = np.array([0.1, 0.1, 0.1, 0.1, 9.0, 2.0, 3.0, 4.0, 5.0, 90.0])  # outliers do not move a median
    t = rule.thresholds(loss_histograms(ids, loss, 3))
    assert t[0] == pytest.approx(0.5)  # 1.5 * 0.1 is under the floor
    assert t[1] == pytest.approx(1.5 * 4.0, rel=0.02)  # the histogram's bins are about 1.4% wide
    assert math.isinf(t[2])  # a class no sample has ignores nothing
    with pytest.raises(ValueError, match="margin=0"):
        FilterRule(margin=0)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), True, "0.2"])
def test_a_label_probability_floor_outside_0_1_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match=r"min_probability=.* must be a number in \(0, 1\]"):
        FilterRule(min_probability=bad)
    with pytest.raises(ValueError, match=r"margin='2' must be a number > 0"):
        FilterRule(margin="2")
    with pytest.raises(TypeError):  # keyword-only: FilterRule(1.25, 0.5) cannot be read as a loss floor
        FilterRule(1.25, 0.5)


def test_the_floor_defaults_by_the_kind_of_loss():
    """A softmax model's unsure pixel (label probability 0.3, as at an edge) is kept; an instance mask's pixel
    that the model's own mask leaves out (0.3 < 0.5) is ignored; an explicit floor wins over both."""
    ids, loss = np.zeros(100, np.int64), np.full(100, 0.01)
    loss[0] = -math.log(0.3)
    hist = loss_histograms(ids, loss, 1)
    semantic, instance = FilterRule().for_task("sem_seg"), FilterRule().for_task("instance")
    assert semantic.min_probability == 0.1 and instance.min_probability == 0.5
    assert loss[0] < semantic.thresholds(hist)[0] and loss[0] > instance.thresholds(hist)[0]
    assert FilterRule(min_probability=0.2).for_task("instance").floor == pytest.approx(-math.log(0.2))
    with pytest.raises(ValueError, match=r"take rule\.for_task"):
        _ = FilterRule().floor
    with pytest.raises(ValueError, match="task='panoptic'"):
        FilterRule().for_task("panoptic")


def test_the_scores_header_records_the_rule_it_used_by_the_models_kind(noisy):
    """The floor left open is the scoring model's kind's (semantic 0.1, instance 0.5); an explicit one is kept;
    a model that does not say its kind is refused unless the rule gives the floor."""
    store, truths, _ = noisy
    header = Scores.read(score_store(store, ExactModel(truths))).header
    assert header["rule"] == {"margin": 1.25, "min_probability": 0.1, "floor": pytest.approx(-math.log(0.1))}

    instance = ExactModel(truths)
    instance.task = "instance"
    assert Scores.read(score_store(store, instance)).header["rule"]["min_probability"] == 0.5
    explicit = score_store(store, instance, FilterRule(min_probability=0.3))
    assert Scores.read(explicit).header["rule"]["min_probability"] == 0.3

    unnamed = ExactModel(truths)
    del unnamed.task
    with pytest.raises(ValueError, match=r"ExactModel\.task=None"):
        score_store(store, unnamed)
    assert Scores.read(score_store(store, unnamed, FilterRule(min_probability=0.5))).header["rule"]["floor"] > 0


def test_judge_ignores_only_pixels_over_their_class_threshold():
    mask = np.array([[0, 0, 1], [1, 255, 1]], np.uint8)
    loss = np.array([[0.1, 2.0, 0.1], [5.0, 9.0, 0.2]], np.float32)
    score, ignored = judge(mask, loss, np.array([1.0, 1.0]))
    assert ignored.tolist() == [[False, True, False], [True, False, False]]  # 255 is never "ignored" again
    assert score.ignored_share == pytest.approx(2 / 5)
    assert score.hardness == pytest.approx(np.mean([0.1, 0.1, 0.2]), abs=1e-6)  # rounded to 6 places
    assert (rle.decode(score.ignored) == ignored).all()


def test_planted_noise_is_ignored_when_the_pool_serves_samples(noisy):
    store, truths, noise = noisy
    path = score_store(store, ExactModel(truths), FilterRule(), tag="exact")
    assert path.parent == store / "scores" and not path.name.startswith(".")
    pool = SyntheticPool(store, PoolParams(loss_filter=True, max_ignored=1.0))
    pool.adopt(pool.current_snapshot())
    assert len(pool) == 12
    removed_noise = kept_right = total_noise = total_right = 0
    for j, rec in enumerate(pool.records):
        served = pool.read(j)
        planted_px = noise[rec["id"]]
        ignored = served.mask == 255
        removed_noise += int((ignored & planted_px).sum())
        total_noise += int(planted_px.sum())
        kept_right += int((~ignored & ~planted_px).sum())
        total_right += int((~planted_px).sum())
        assert pool.ignored_area(j) == int(ignored.sum())
    assert total_noise > 50
    assert removed_noise == total_noise  # every planted pixel is ignored
    assert kept_right == total_right  # and no right one


def test_samples_over_max_ignored_leave_the_pool_and_counters_show_the_share(noisy):
    store, truths, noise = noisy
    score_store(store, ExactModel(truths))
    shares = {sid: px.sum() / px.size for sid, px in noise.items()}
    cap = float(np.median(list(shares.values())))
    ds = SyntheticMixDataset(
        [render_seed(100 + i, SIZE).to_sample() for i in range(20)],
        store,
        ratio=0.5,
        loss_filter=True,
        max_ignored=cap,
    )
    assert {r["id"] for r in ds.pool.records} == {sid for sid, s in shares.items() if s <= cap + 1e-6}
    for i in range(len(ds)):
        ds[i]
    c = ds.counters()
    assert c["filtered_out"] == 12 - len(ds.pool)
    assert 0 < c["ignored_share"] < 0.2


def test_class_mismatch_names_both_lists(noisy):
    store, truths, _ = noisy
    with pytest.raises(
        ValueError,
        match=r"checkpoint's classes \['background', 'circle', 'square'\] differ from "
        r"the store's \['background', 'circle', 'square', 'triangle'\]",
    ):
        score_store(store, ExactModel(truths, classes=NAMES[:3]))


def test_classes_in_another_order_are_matched_by_name(noisy):
    store, truths, noise = noisy
    score_store(store, ExactModel(truths, classes=NAMES[::-1]))
    scores = Scores.newest(store, NAMES)
    assert sum(s.ignored_share > 0 for s in scores.by_id.values()) == sum(n.any() for n in noise.values())


def test_a_scorer_that_dies_half_way_leaves_the_previous_scores(noisy):
    store, truths, _ = noisy
    first = score_store(store, ExactModel(truths))
    with pytest.raises(RuntimeError, match="scorer died"):
        score_store(store, ExactModel(truths, fail_after=1), batch_size=4)
    assert sorted(os.listdir(store / "scores")) == [first.name]
    assert Scores.newest(store, NAMES).path == first


def test_a_scorer_killed_while_writing_leaves_nothing_a_reader_takes(noisy):
    """kill -9 during the write of the scores file: the hidden temporary file is never read."""
    store, truths, _ = noisy
    first = score_store(store, ExactModel(truths))
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        import synthaug.scoring as s
        real_fsync = os.fsync
        def die(fd):
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync = die
        header = {{"format": s.FORMAT, "version": s.VERSION, "classes": {NAMES!r}}}
        s.write_scores(__import__("pathlib").Path({str(store)!r}), "killed", header, ["{{}}"] * 1000)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    leftovers = [n for n in os.listdir(store / "scores") if n != first.name]
    assert leftovers and all(n.startswith(".") and n.endswith(".tmp") for n in leftovers)  # hidden temporaries
    assert Scores.newest(store, NAMES).path == first


def test_bad_lines_are_skipped_and_counted_and_a_bad_newest_file_falls_back(noisy, caplog):
    store, truths, _ = noisy
    first = score_store(store, ExactModel(truths))
    lines = first.read_text().splitlines()
    good = json.loads(lines[1])
    bad = [
        "not json",
        json.dumps({**good, "id": "../../etc"}),
        json.dumps({**good, "ignored_share": 7}),
        json.dumps({**good, "ignored": "x"}),
        json.dumps({"id": good["id"]}),
    ]
    second = first.with_name("99999999999999999999-edited.jsonl")
    second.write_text("\n".join([lines[0], *bad, *lines[2:]]) + "\n")
    scores = Scores.newest(store, NAMES)
    assert scores.path == second
    assert len(scores.problems) == 5 and all(p.startswith(second.name) for p in scores.problems)
    assert len(scores.by_id) == 11  # the first sample's only line was replaced by bad ones
    third = first.with_name("99999999999999999999-zz-torn.jsonl")
    third.write_text('{"format": "synthaug-sc')
    with caplog.at_level(logging.WARNING):
        assert Scores.newest(store, NAMES).path == second
    assert Scores.newest(store, NAMES).problems[0].startswith(third.name)


def test_symlinked_scores_are_neither_read_nor_written_through(noisy, tmp_path):
    store, truths, _ = noisy
    outside = tmp_path / "outside"
    outside.mkdir()
    first = score_store(store, ExactModel(truths))
    link = first.with_name("99999999999999999999-link.jsonl")
    link.symlink_to(first)
    assert Scores.newest(store, NAMES).path == first  # the link is refused (O_NOFOLLOW), the file behind it used
    for name in os.listdir(store / "scores"):
        os.unlink(store / "scores" / name)
    os.rmdir(store / "scores")
    (store / "scores").symlink_to(outside, target_is_directory=True)
    with pytest.raises(OSError, match="symbolic link"):
        score_store(store, ExactModel(truths))
    assert os.listdir(outside) == []
    assert Scores.newest(store, NAMES) is None


def test_no_scores_yet_serves_unfiltered_and_says_so_once(noisy, caplog):
    store, _, _noise = noisy
    pool = SyntheticPool(store, PoolParams(loss_filter=True))
    with caplog.at_level(logging.WARNING):
        pool.adopt(pool.current_snapshot())
        pool.adopt(pool.current_snapshot())
    assert sum("holds no scores yet" in r.message for r in caplog.records) == 1
    assert len(pool) == 12 and not (pool.read(0).mask == 255).any()


def test_scores_of_another_vocabulary_are_not_used(noisy):
    store, truths, _ = noisy
    score_store(store, ExactModel(truths))
    assert Scores.newest(store, ["background", "dog"]) is None


def test_hardness_weights_are_capped_ratios_to_the_mean(noisy):
    store, truths, _ = noisy
    score_store(store, ExactModel(truths))
    st = SampleStore(store)
    records = list(st)
    scores = Scores.newest(store, NAMES)
    h = np.array([scores.get(r["id"]).hardness for r in records])
    w = hardness_weights(records, scores, cap=3.0)
    np.testing.assert_allclose(w, np.clip(h / h.mean(), 1 / 3, 3))
    unscored = hardness_weights([*records, {"id": "new-1"}], scores, cap=3.0)
    assert unscored[-1] == 1.0
    pool = SyntheticPool(store, PoolParams(policy="hardness"))
    pool.adopt(pool.current_snapshot())
    np.testing.assert_allclose(pool._weights, w / w.sum())


def test_class_weights_follow_hardness_with_a_cap(noisy):
    store, truths, _ = noisy
    score_store(store, ExactModel(truths))
    scores = Scores.newest(store, NAMES)
    h = {k: v for k, v in scores.header["class_hardness"].items() if v}
    w = class_weights(scores, cap=2.0)
    mean = sum(h.values()) / len(h)
    assert w == pytest.approx({k: min(max(v / mean, 0.5), 2.0) for k, v in h.items()})
    assert class_weights(None) == {}


def test_the_producer_prompts_for_hard_classes_more_often(tmp_path):
    """Scores that call triangles hard: the producer's prompt class counts move towards triangles."""
    from synthaug.config import GenerationConfig
    from synthaug.producer import Producer
    from synthaug.scoring import FORMAT, VERSION, write_scores

    store = create_store(tmp_path / "store", TOY_VOCABULARY)
    hardness = {"background": 0.1, "circle": 0.1, "square": 0.1, "triangle": 1.0}
    write_scores(
        store, "hard", {"format": FORMAT, "version": VERSION, "classes": NAMES, "class_hardness": hardness}, []
    )
    shares = {}
    for bias in (False, True):
        producer = Producer(GenerationConfig(), store, segment="p0", hardness_bias=bias)
        for batch in range(8):
            producer._prompts(16, 1000 + 16 * batch, TOY_VOCABULARY)
        counts = producer.class_counts
        shares[bias] = counts["triangle"] / sum(counts.values())
    assert shares[False] == pytest.approx(1 / 3, abs=0.1)  # toy scenes draw shapes evenly
    assert shares[True] > 1.5 * shares[False]


def test_class_weights_combine_hardness_and_validation_iou():
    """Each signal relative to its class mean; a class with both gets their geometric mean; then the cap."""
    from synthaug.scoring import FORMAT, Scores

    scores = Scores(Path("x"), {"format": FORMAT, "class_hardness": {"a": 1.0, "b": 3.0, "c": None}}, {})
    iou = {"a": 0.8, "b": 0.8, "c": 0.2}  # misses 0.2, 0.2, 0.8: mean 0.4
    w = class_weights(scores, cap=10.0, class_iou=iou)
    assert w == pytest.approx({"a": (0.5 * 0.5) ** 0.5, "b": (1.5 * 0.5) ** 0.5, "c": 2.0})
    assert class_weights(None, cap=10.0, class_iou=iou) == pytest.approx({"a": 0.5, "b": 0.5, "c": 2.0})
    assert class_weights(None, cap=1.5, class_iou={"a": 1.0, "b": 0.0}) == {"a": 1 / 1.5, "b": 1.5}
    assert class_weights(None, class_iou={"a": 1.0, "b": 1.0}) == {}  # nothing is missed: no signal


def test_class_iou_file_round_trips_and_a_bad_one_reads_as_none(tmp_path):
    from synthaug.scoring import CLASS_IOU_FILE, read_class_iou, write_class_iou

    write_class_iou(tmp_path, 500, {"circle": 0.5, "square": float("nan"), "triangle": 1.0})
    got = read_class_iou(tmp_path)
    assert list(got) == ["circle", "square", "triangle"]  # every class, in order: no pixels of one is NaN
    assert got["circle"] == 0.5 and math.isnan(got["square"]) and got["triangle"] == 1.0
    assert [p.name for p in tmp_path.iterdir()] == [CLASS_IOU_FILE]  # no temporary file left
    for bad in ("{", '{"class_iou": [1]}', '{"class_iou": {"circle": 7}}', "null"):
        (tmp_path / CLASS_IOU_FILE).write_text(bad)
        assert read_class_iou(tmp_path) == {}
    assert read_class_iou(tmp_path / "missing") == {}


def test_the_producer_prompts_for_classes_the_trainer_validates_badly_more_often(tmp_path):
    """No scores yet, but the run's validation says triangles are missed: the prompts move towards triangles."""
    from synthaug.config import GenerationConfig
    from synthaug.producer import Producer
    from synthaug.scoring import LiveScoring, write_class_iou

    store = create_store(tmp_path / "store", TOY_VOCABULARY)
    work = tmp_path / "work"
    work.mkdir()
    write_class_iou(work, 100, {"background": 0.95, "circle": 0.9, "square": 0.9, "triangle": 0.3})
    live = LiveScoring(tmp_path / "config.py", work)  # no checkpoint yet: nothing is scored
    shares = {}
    for bias in (False, True):
        producer = Producer(GenerationConfig(), store, segment="p0", scoring=live, hardness_bias=bias)
        for batch in range(8):
            producer._prompts(16, 1000 + 16 * batch, TOY_VOCABULARY)
        counts = producer.class_counts
        shares[bias] = counts["triangle"] / sum(counts.values())
    assert shares[True] > 1.5 * shares[False]


def test_every_reader_of_a_snapshot_applies_the_same_scores(noisy):
    """Workers and ranks adopt one snapshot at different times: a scores file written in between must not
    change what that snapshot holds (the draw is a function of the snapshot), only the next snapshot."""
    store, truths, _ = noisy
    first = score_store(store, ExactModel(truths))
    a = SyntheticPool(store, PoolParams(loss_filter=True, max_ignored=0.0))
    snap = a.current_snapshot()
    a.adopt(snap)
    assert snap[SCORES_KEY] == Scores.read(first).stamp
    agreeing = ExactModel({seed: planted(seed)[0].mask for seed in truths})  # a model that finds no noise
    second = score_store(store, agreeing)
    b = SyntheticPool(store, PoolParams(loss_filter=True, max_ignored=0.0))
    b.adopt(snap)
    assert [r["id"] for r in b.records] == [r["id"] for r in a.records]
    assert b.scores.path == first
    later = b.current_snapshot()
    assert later[SCORES_KEY] == Scores.read(second).stamp
    b.adopt(later)
    assert b.scores.path == second
    assert [r["id"] for r in b.records] != [r["id"] for r in a.records]


def test_live_scoring_settings_reach_the_producer_command_line_intact(tmp_path):
    """What a training run's supervisor asks for (framework, the model's classes, the mix's class map) is what
    the producer it launches parses; a bad framework or class map fails at start, naming it."""
    from synthaug.cli import _class_options, build_parser
    from synthaug.scoring import LiveScoring
    from synthaug.supervisor import ProducerSupervisor

    score = dict(
        config=tmp_path / "c.yaml",
        work_dir=tmp_path,
        framework="detectron2",
        classes=["circle", "road, route", "big box", "triangle"],  # ADE20K's names hold commas
        class_map={"square": "big box", "background": None},
        every=3,
        min_probability=0.2,
    )
    cmd = ProducerSupervisor(tmp_path / "store", score=score).command()
    args = build_parser().parse_args(cmd[cmd.index("produce") :])
    classes, class_map = _class_options(args, "score_")
    assert args.score_framework == "detectron2" and args.score_every == 3 and args.min_probability == 0.2
    assert build_parser().parse_args(["produce", "--store", "s"]).min_probability is None  # the model's default
    from synthaug.cli import _live_scoring

    live = _live_scoring(args, "cpu")
    assert (live.framework, live.every, live.min_probability, live.margin) == ("detectron2", 3, 0.2, 1.25)
    assert live.classes == classes and dict(live.class_map) == class_map
    alone = build_parser().parse_args(["produce", "--store", "s", "--min-probability", "0.2"])
    with pytest.raises(ValueError, match="--min-probability sets live scoring's rule: give --score-config"):
        _live_scoring(alone, "cpu")
    with pytest.raises(ValueError, match=r"min_probability=True must be a number"):
        ProducerSupervisor(tmp_path / "store", score={**score, "min_probability": True})
    with pytest.raises(ValueError, match=r"min_probability=2 must be a number in \(0, 1\]"):
        ProducerSupervisor(tmp_path / "store", score={**score, "min_probability": 2})
    with pytest.raises(ValueError, match=r"min_probability=0 must be a number in \(0, 1\]"):
        LiveScoring(tmp_path / "c.yaml", tmp_path, min_probability=0)
    assert classes == ("circle", "road, route", "big box", "triangle")
    assert class_map == {"square": "big box", "background": None}
    with pytest.raises(ValueError, match="framework='caffe'"):
        LiveScoring(tmp_path / "c.yaml", tmp_path, framework="caffe")
    for bad, message in (('["circle", 3]', "give a JSON list of class names"), ("[circle", "is not a JSON list")):
        with pytest.raises(ValueError, match=message):
            _class_options(build_parser().parse_args(["produce", "--store", "s", "--score-classes", bad]), "score_")
    with pytest.raises(ValueError, match="--score-class-map entry 'square'"):
        _class_options(build_parser().parse_args(["produce", "--store", "s", "--score-class-map", "square"]), "score_")


def test_validation_iou_is_keyed_by_store_names_as_the_mix_matches_them():
    """The trainer names classes as its dataset does; the producer's weights are looked up by store names."""
    from synthaug.scoring import store_class_iou
    from synthaug.vocabulary import ClassVocabulary

    store = ClassVocabulary(["background", "traffic light", "person", "car"], palette=TOY_VOCABULARY.palette)
    iou = {"traffic_light": 0.1, "Person": 0.8, "bus": 0.2, "automobile": 0.5, "sky": 0.9}
    assert store_class_iou(iou, store) == {"traffic light": 0.1, "person": 0.8}  # bus, sky: not the store's
    assert store_class_iou(iou, store, {"car": "automobile", "person": None}) == {
        "traffic light": 0.1,
        "car": 0.5,
    }
    assert store_class_iou(iou, store, {"car": 3}) == {"traffic light": 0.1, "person": 0.8, "car": 0.5}


def test_a_class_absent_from_validation_does_not_shift_a_class_maps_id_targets(tmp_path):
    """The IoU file keeps a class with no validation pixels (NaN), so an id target still names the dataset's
    class at that position; the NaN class itself gives no figure."""
    from synthaug.scoring import read_class_iou, store_class_iou, write_class_iou
    from synthaug.vocabulary import ClassVocabulary

    write_class_iou(tmp_path, 10, {"road": 0.9, "bus": float("nan"), "automobile": 0.25})
    store = ClassVocabulary(["background", "car", "bus"], palette=TOY_VOCABULARY.palette[:3])
    assert store_class_iou(read_class_iou(tmp_path), store, {"car": 2}) == {"car": 0.25}


def test_a_model_that_scores_nothing_writes_no_scores_and_the_previous_stay(noisy):
    """A diverged checkpoint (every loss NaN) must not replace good scores with empty ones."""
    store, truths, _ = noisy
    good = score_store(store, ExactModel(truths))

    class Diverged(ExactModel):
        def pixel_loss(self, samples):
            return [np.full(s.mask.shape, np.nan, np.float32) for s in samples]

    with pytest.raises(ValueError, match="scored no pixel of the 12 samples"):
        score_store(store, Diverged(truths))
    assert Scores.newest(store, NAMES).path == good
    assert Scores.read(good).header["scored_pixels"] == 12 * SIZE * SIZE


def test_huge_losses_are_capped_and_written_as_finite_json(noisy):
    import json

    store, truths, _ = noisy

    class Sure(ExactModel):  # a model sure that every label is wrong, beyond float16's range
        def pixel_loss(self, samples):
            return [np.full(s.mask.shape, 1e9, np.float32) for s in samples]

    path = score_store(store, Sure(truths))
    lines = path.read_text().splitlines()
    assert all(math.isfinite(json.loads(ln)["hardness"]) for ln in lines[1:])  # json.loads rejects nothing here
    assert "Infinity" not in path.read_text()


def test_the_second_pass_reads_again_only_what_the_cache_could_not_keep(noisy, monkeypatch):
    """With room for every sample the model runs once per sample and nothing is read twice; with no room
    both passes read and run; the scores are the same either way."""
    from synthaug.store import SampleStore

    store, truths, _ = noisy
    reads = []
    real_read = SampleStore.try_read_record
    monkeypatch.setattr(
        SampleStore, "try_read_record", lambda self, rec: reads.append(rec["id"]) or real_read(self, rec)
    )
    kept = ExactModel(truths)
    a = Scores.read(score_store(store, kept, tag="kept"))
    assert len(reads) == 12 and kept.calls == 1  # 12 samples, one batch of 16
    reads.clear()
    none = ExactModel(truths)
    b = Scores.read(score_store(store, none, tag="none", cache_mb=0))
    assert len(reads) == 24 and none.calls == 2
    assert a.by_id.keys() == b.by_id.keys()
    for k, x in a.by_id.items():  # the kept losses are float16: hardness agrees to its precision
        y = b.by_id[k]
        assert (x.ignored, x.ignored_share) == (y.ignored, y.ignored_share)
        assert x.hardness == pytest.approx(y.hardness, rel=1e-3)

"""Loss-based noise filtering of synthetic samples (FreeMask's rule), with the scores kept beside the store.

A segmentation model (trained on real data, or the one being trained) runs on every synthetic sample
and gives each labelled pixel its cross-entropy loss. Per class c, a pixel whose loss is abnormal for
its class is ignored (set to 255) when the mix serves the sample:

    ignore pixel p of class c  iff  loss(p) > max(margin * median_c, floor),  floor = -ln(min_probability)

median_c is the median loss of the class-c pixels of every scored sample. FreeMask compares with the
class mean; the median is used because the noise itself inflates the mean (planted noise, a toy FCN
trained 400 iterations, floor 0.1: margin 1.25 x mean ignored 65% of the planted pixels, x median 86%, with
1.8% of the right ones; benchmarks/loss_filter_planted.py). The floor keeps every pixel whose label the model gives at least `min_probability`,
however small the class's typical loss; it depends on the model's loss:
- a softmax over the classes (semantic): 0.1, a pixel the model is sure belongs to another class. With
  0.5 (the first default), a toy FCN trained 3000 iterations ignored 9.6% of the labelled pixels of the
  evidence pool, 96% of them right by colour truth (edges, and the class it was worst at); with 0.1, 1.3%
  (benchmarks/loss_filter_truth.py, artefact loss_filter_truth__pool-edge__*.json). On the noisier pool
  without mask refinement, 0.1 ignored 1.7%, of which 69% wrong (0.5: 10%, of which 34%).
- an instance mask (detectron2's mask head): 0.5. An instance's loss is its mask's mean binary
  cross-entropy, given to all its pixels: above ln 2, the model gives the instance's mask a geometric mean
  probability under one half.
A sample whose ignored share of labelled pixels passes the mix's `max_ignored` leaves the mix. A sample's
hardness is the mean loss of the pixels it keeps (hard but clean), which the 'hardness' pool policy draws by.

Scores live in STORE/scores/<time>-<tag>.jsonl, one file per scoring pass (one checkpoint): a header
line, then one line per sample. A file is written under a hidden temporary name and renamed into place,
so a scorer killed half-way leaves nothing a reader takes; readers take the newest complete file and
skip (and count) lines they cannot parse. Samples are never rewritten.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from synthaug import rle
from synthaug.imageio import atomic_write_bytes
from synthaug.sample import Instance, Sample
from synthaug.store import SampleStore, plain_subdir
from synthaug.store_check import ID_FORM
from synthaug.vocabulary import IGNORE_INDEX, ClassVocabulary, match_classes

log = logging.getLogger(__name__)

SCORES = "scores"
#: The key of a pool snapshot that names the scores file (its stamp) every reader of that snapshot applies.
SCORES_KEY = "#scores"
FORMAT = "synthaug-scores"
VERSION = 1
_FILE_NAME = re.compile(r"^\d{20}-[A-Za-z0-9._-]{1,80}\.jsonl$")
#: An instance more than this share of whose pixels are ignored is dropped from the served sample.
INSTANCE_IGNORED_DROP = 0.5
#: Losses are capped here (a pixel the model is sure is another class): kept as float16 between the passes,
#: written as finite JSON. NaN (not scored) stays NaN.
MAX_LOSS = 1e4
#: The frameworks whose models can score a store (their loss models live in synthaug.integrations).
FRAMEWORKS = ("mmseg", "detectron2")
#: The filter's default floor per kind of loss, as the label probability under which a pixel may be ignored
#: (see the module docstring): a softmax over classes, and an instance's binary mask.
SEMANTIC_MIN_PROBABILITY = 0.1
INSTANCE_MIN_PROBABILITY = 0.5
DEFAULT_MIN_PROBABILITY = {"sem_seg": SEMANTIC_MIN_PROBABILITY, "instance": INSTANCE_MIN_PROBABILITY}


class LossModel(Protocol):
    """A segmentation model that gives the per-pixel loss of samples (integrations provide one per framework)."""

    #: The model's class names, in its class ids.
    classes: Sequence[str]
    #: What produced the model (a checkpoint path), recorded with the scores.
    name: str
    #: 'sem_seg' (per-pixel softmax cross-entropy) or 'instance' (each instance's binary mask loss): picks the
    #: filter's default floor.
    task: str

    def pixel_loss(self, samples: list[Sample]) -> list[np.ndarray]:
        """(H, W) float loss of each sample's labels (already in the model's ids) under the model, per pixel;
        NaN where the model does not score a pixel (e.g. outside every instance for an instance model)."""
        ...


#: Loss histogram bins (natural-log losses from 1e-4 to 100; about 1.4% wide) for the class medians.
LOSS_BINS = np.geomspace(1e-4, 100.0, 1025)


@dataclass(frozen=True, kw_only=True)
class FilterRule:
    """Which pixels are noise: loss > max(margin * class median loss, -ln min_probability) (module docstring).

    min_probability None: the default of the scoring model's kind of loss (DEFAULT_MIN_PROBABILITY)."""

    margin: float = 1.25
    min_probability: float | None = None

    def __post_init__(self) -> None:
        if not (_is_number(self.margin) and self.margin > 0 and math.isfinite(self.margin)):
            raise ValueError(
                f"margin={self.margin!r} must be a number > 0 (a multiple of the class median loss; 1.25 by default)"
            )
        p = self.min_probability
        if p is not None and not (_is_number(p) and 0 < p <= 1):
            raise ValueError(
                f"min_probability={p!r} must be a number in (0, 1]: the label probability under which a pixel may be "
                "ignored "
                f"(default {SEMANTIC_MIN_PROBABILITY} for semantic models, {INSTANCE_MIN_PROBABILITY} for instance masks)"
            )

    def for_task(self, task: str) -> FilterRule:
        """This rule with its floor set for a model of `task` ('sem_seg' or 'instance') where it was left open."""
        if self.min_probability is not None:
            return self
        if task not in DEFAULT_MIN_PROBABILITY:
            raise ValueError(f"task={task!r}: a loss model is {list(DEFAULT_MIN_PROBABILITY)}")
        return FilterRule(margin=self.margin, min_probability=DEFAULT_MIN_PROBABILITY[task])

    @property
    def floor(self) -> float:
        """The loss under which no pixel is ignored: -ln(min_probability)."""
        if self.min_probability is None:
            raise ValueError("the rule's min_probability is open: take rule.for_task(model.task) first")
        return -math.log(self.min_probability)

    def thresholds(self, histograms: np.ndarray) -> np.ndarray:
        """Per class id: the loss above which a pixel of that class is ignored (inf for unseen classes).

        `histograms`: (classes, len(LOSS_BINS) + 1) pixel counts per loss bin (see loss_histograms)."""
        return np.maximum(self.margin * class_medians(histograms), self.floor)


def _is_number(x: object) -> bool:
    """A real number (True and False are not: a YAML `true` is a mistake, not 1)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def loss_histograms(class_ids: np.ndarray, loss: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, len(LOSS_BINS) + 1) counts of the pixels of each class per loss bin."""
    bins = np.searchsorted(LOSS_BINS, loss, side="right")
    flat = np.bincount(class_ids * (len(LOSS_BINS) + 1) + bins, minlength=n_classes * (len(LOSS_BINS) + 1))
    return flat[: n_classes * (len(LOSS_BINS) + 1)].reshape(n_classes, -1)


def class_medians(histograms: np.ndarray) -> np.ndarray:
    """Each class's median loss from its histogram (the upper edge of the bin holding the middle pixel)."""
    edges = np.append(LOSS_BINS, np.inf)
    out = np.full(len(histograms), np.inf)
    for c, h in enumerate(histograms):
        total = h.sum()
        if total:
            out[c] = edges[int(np.searchsorted(np.cumsum(h), (total + 1) / 2))]
    return out


@dataclass(frozen=True)
class SampleScore:
    """One sample's verdict: the pixels to ignore (an RLE, or None), their share of its labelled pixels, hardness."""

    ignored: dict[str, Any] | None
    ignored_share: float
    hardness: float


def load_loss_model(
    framework: str,
    config: str | Path,
    checkpoint: str | Path,
    device: str = "cpu",
    classes: Sequence[str] | None = None,
) -> LossModel:
    """A framework's LossModel (imported only now: the core knows no framework). `classes`: the model's class
    names, where its checkpoint and config do not say them (detectron2 takes them from its registered datasets)."""
    if framework == "mmseg":
        try:
            from synthaug.integrations.mmseg.scoring import MMSegLossModel
        except ImportError as err:
            raise ValueError(
                f"scoring with mmseg needs MMSegmentation: pip install 'synthaug[mmseg]' ({err})"
            ) from None
        return MMSegLossModel(config, checkpoint, device)
    if framework == "detectron2":
        try:
            from synthaug.integrations.detectron2.scoring import Detectron2LossModel
        except ImportError as err:
            raise ValueError(
                f"scoring with detectron2 needs detectron2: pip install 'synthaug[detectron2]' ({err})"
            ) from None
        return Detectron2LossModel(config, checkpoint, device, classes)
    raise ValueError(f"framework={framework!r}: scoring supports {list(FRAMEWORKS)}")


def class_lut(
    vocabulary: ClassVocabulary, model_names: Sequence[str], class_map: Mapping[str, str | int | None] | None = None
) -> np.ndarray:
    """256-entry lookup from store class ids to the model's, matched by name as the mix matches them (a store
    background the model lacks, as an instance model lacks it, is not scored); a clear error naming both lists
    if a store class has no model class."""
    try:
        return match_classes(vocabulary, model_names, class_map, key="class_map (--class-map)", what="the checkpoint")
    except ValueError as err:
        raise ValueError(
            f"the checkpoint's classes {list(model_names)} differ from the store's {list(vocabulary.names)}: score "
            f"with a model trained on the store's classes, or map them. {err}"
        ) from None


def score_store(
    store: str | Path,
    model: LossModel,
    rule: FilterRule | None = None,
    tag: str = "scores",
    batch_size: int = 16,
    cache_mb: float = 1024.0,
    progress: Callable[[int, int], None] | None = None,
    class_map: Mapping[str, str | int | None] | None = None,
) -> Path:
    """Score every sample the store holds now with `model`, and write the scores file; returns its path.

    Two passes: the first takes each class's loss distribution, the second decides each pixel. Losses and masks
    are kept between them (float16 and uint8) up to `cache_mb`; beyond that the sample is read and run again.
    Store classes are matched to the model's by name (or `class_map`, as the mix's); statistics stay per store
    class.
    """
    rule = rule or FilterRule()
    if rule.min_probability is None:
        try:
            rule = rule.for_task(getattr(model, "task", None))
        except ValueError as err:
            raise ValueError(
                f"{type(model).__name__}.{err}: a loss model says which kind it is so that the filter's floor fits "
                "it; or give FilterRule(min_probability=...)"
            ) from None
    st = SampleStore(store)
    names = st.vocabulary.names
    lut = class_lut(st.vocabulary, model.classes, class_map)
    records = list(st)
    n_cls = len(names)
    loss_sum, count = np.zeros(n_cls), np.zeros(n_cls)
    hist = np.zeros((n_cls, len(LOSS_BINS) + 1), np.int64)
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    budget = cache_mb * 2**20
    unreadable = 0

    def batches() -> Iterable[list[tuple[str, np.ndarray, np.ndarray]]]:
        """(sample id, loss, its mask in store ids with the pixels the model does not score set to 255) per batch;
        a sample whose loss and mask the first pass kept is not read again."""
        nonlocal unreadable
        for start in range(0, len(records), batch_size):
            ready, todo = [], []
            for rec in records[start : start + batch_size]:
                kept = cache.get(rec["id"])
                if kept is not None:
                    ready.append((rec["id"], kept[0].astype(np.float32), kept[1]))
                    continue
                sample = st.try_read_record(rec)
                if sample is None:
                    unreadable += 1
                    continue
                todo.append((rec["id"], sample.mask, sample.relabelled(lut)))
            losses = model.pixel_loss([theirs for *_, theirs in todo]) if todo else []
            for (sample_id, ours, theirs), loss in zip(todo, losses):
                loss = np.minimum(loss, MAX_LOSS, dtype=np.float32)
                unscored = (theirs.mask == IGNORE_INDEX) | np.isnan(loss)
                ready.append((sample_id, loss, np.where(unscored, IGNORE_INDEX, ours).astype(np.uint8)))
            yield ready
            if progress:
                progress(min(start + batch_size, len(records)), len(records))

    for chunk in batches():
        for sample_id, loss, mask in chunk:
            valid = mask != IGNORE_INDEX
            ids = mask[valid].astype(np.int64)
            loss_sum += np.bincount(ids, weights=loss[valid], minlength=n_cls)[:n_cls]
            count += np.bincount(ids, minlength=n_cls)[:n_cls]
            hist += loss_histograms(ids, loss[valid], n_cls)
            if budget >= loss.size * 3 and sample_id not in cache:  # float16 loss + uint8 mask
                cache[sample_id] = (loss.astype(np.float16), mask)
                budget -= loss.size * 3
    if records and not count.any():
        raise ValueError(
            f"{model.name} scored no pixel of the {len(records)} samples (every loss NaN, or no labelled pixel the "
            "model has a class for): a diverged checkpoint, or classes that do not match; the previous scores stay"
        )
    thresholds = rule.thresholds(hist)
    unreadable = 0  # counted again in the second pass
    lines, ignored_px, kept_sum = [], np.zeros(n_cls), np.zeros(n_cls)
    for chunk in batches():
        for sample_id, loss, mask in chunk:
            score, ignored = judge(mask, loss.astype(np.float32), thresholds)
            kept = (mask != IGNORE_INDEX) & ~ignored
            ignored_px += np.bincount(mask[ignored], minlength=n_cls)[:n_cls]
            kept_sum += np.bincount(mask[kept], weights=loss[kept], minlength=n_cls)[:n_cls]
            lines.append(json.dumps({"id": sample_id, **score.__dict__}, separators=(",", ":")))
    kept_n = count - ignored_px
    header = {
        "format": FORMAT,
        "version": VERSION,
        "checkpoint": str(model.name),
        "classes": list(names),
        "model_classes": list(model.classes),
        "rule": {"margin": rule.margin, "min_probability": rule.min_probability, "floor": rule.floor},
        "created": time.time(),
        "samples": len(lines),
        "unreadable": unreadable,
        "scored_pixels": int(count.sum()),
        "class_mean_loss": _per_class(names, np.where(count > 0, loss_sum / np.maximum(count, 1), float("nan"))),
        "class_median_loss": _per_class(names, class_medians(hist)),
        "class_threshold": _per_class(names, thresholds),
        "class_ignored_share": _per_class(names, np.where(count > 0, ignored_px / np.maximum(count, 1), float("nan"))),
        # the mean loss of the pixels each class keeps: how hard the class is once its noise is ignored
        "class_hardness": _per_class(names, np.where(kept_n > 0, kept_sum / np.maximum(kept_n, 1), float("nan"))),
    }
    return write_scores(st.root, tag, header, lines)


def judge(mask: np.ndarray, loss: np.ndarray, thresholds: np.ndarray) -> tuple[SampleScore, np.ndarray]:
    """A sample's score from its mask (store ids, 255 = ignore), its per-pixel loss and the class thresholds."""
    valid = mask != IGNORE_INDEX
    limit = np.full(256, np.inf)
    limit[: len(thresholds)] = thresholds
    ignored = valid & (loss > limit[mask])
    kept = valid & ~ignored
    n_valid = int(valid.sum())
    share = float(ignored.sum()) / n_valid if n_valid else 0.0
    hardness = float(loss[kept].mean()) if kept.any() else 0.0
    return SampleScore(rle.encode(ignored) if ignored.any() else None, round(share, 6), round(hardness, 6)), ignored


def _per_class(names: Sequence[str], values: np.ndarray) -> dict[str, float | None]:
    return {n: (None if not math.isfinite(v) else round(float(v), 6)) for n, v in zip(names, values)}


def write_scores(store: Path, tag: str, header: dict[str, Any], lines: list[str]) -> Path:
    """Write a scores file crash-safely into STORE/scores/ (imageio.atomic_write_bytes: hidden temporary name,
    fsync, rename), under a name that sorts by time."""
    folder = plain_subdir(store, SCORES)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", tag).strip("._")[:80] or "scores"
    final = folder / f"{time.time_ns():020d}-{slug}.jsonl"
    body = json.dumps(header, separators=(",", ":")) + "\n" + "".join(line + "\n" for line in lines)
    atomic_write_bytes(final, body.encode())
    return final


@dataclass
class Scores:
    """The newest complete scores file of a store, parsed line by line (bad lines skipped and counted)."""

    path: Path
    header: dict[str, Any]
    by_id: dict[str, SampleScore] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def newest(
        cls, store: str | Path, classes: Sequence[str] | None = None, known: Scores | None = None
    ) -> Scores | None:
        """The newest readable scores file in STORE/scores/ whose classes are `classes` (None: none yet).

        `known`, the Scores read last time, is returned as is when no newer file has appeared."""
        folder, names = _scores_files(store)
        skipped: list[str] = []
        for name in reversed(names):
            if known is not None and known.path.name == name:
                return known
            try:
                scores = cls.read(folder / name)
            except (OSError, ValueError) as err:
                skipped.append(f"{name}: {err}")
                continue
            if classes is not None and list(scores.header.get("classes", [])) != list(classes):
                skipped.append(f"{name}: classes {scores.header.get('classes')} are not the store's {list(classes)}")
                continue
            scores.problems[:0] = skipped
            return scores
        if skipped:
            log.warning("synthaug: no usable scores file in %s: %s", folder, "; ".join(skipped[:3]))
        return None

    @property
    def stamp(self) -> int:
        """The file's creation time in ns, from its name: what a pool snapshot records (SCORES_KEY)."""
        return int(self.path.name[:20])

    @classmethod
    def at(cls, store: str | Path, stamp: int, classes: Sequence[str], known: Scores | None = None) -> Scores | None:
        """The scores file of `stamp` (None if it is gone or unusable): every reader of one snapshot uses the
        same scores, whatever newer file appeared since the snapshot was taken."""
        if known is not None and known.stamp == stamp:
            return known
        folder, names = _scores_files(store)
        prefix = f"{stamp:020d}-"
        for name in (n for n in names if n.startswith(prefix)):
            try:
                scores = cls.read(folder / name)
            except (OSError, ValueError) as err:
                log.warning("synthaug: the scores file %s cannot be read (%s)", name, err)
                continue
            if list(scores.header.get("classes", [])) == list(classes):
                return scores
        return None

    @classmethod
    def read(cls, path: Path) -> Scores:
        """Parse one scores file; ValueError if its header is not a synthaug scores header."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as f:
            raw = f.read()
        lines = raw.split(b"\n")
        try:
            header = json.loads(lines[0])
        except ValueError:
            raise ValueError("its first line is not a JSON header") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("version") != VERSION:
            raise ValueError(f"not a {FORMAT} v{VERSION} file")
        scores = cls(path, header)
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            try:
                sample_id, score = _parse_line(line)
                scores.by_id[sample_id] = score
            except (ValueError, TypeError, KeyError) as err:
                if len(scores.problems) < 100:
                    scores.problems.append(f"{path.name}:{number}: {err}")
        return scores

    def get(self, sample_id: str) -> SampleScore | None:
        return self.by_id.get(sample_id)

    def apply(self, sample: Sample) -> Sample:
        """`sample` with its ignored pixels set to 255 and its mostly-ignored instances dropped (a copy)."""
        score = self.by_id.get(sample.id)
        if score is None or score.ignored is None:
            return sample
        ignored = rle.decode(score.ignored)
        if ignored.shape != sample.mask.shape:
            raise ValueError(f"its ignored pixels are {ignored.shape[::-1]}, the mask is {sample.mask.shape[::-1]}")
        mask = sample.mask.copy()
        mask[ignored] = IGNORE_INDEX
        instances = [i for i in sample.instances if not _mostly_ignored(i, ignored)]
        return Sample(
            sample.image, mask, instances, sample.prompt, sample.seed, sample.quality, sample.fingerprint, sample.id
        )


def _scores_files(store: str | Path) -> tuple[Path, list[str]]:
    """STORE/scores and the names of the scores files in it, oldest first (none if it is missing or a symlink)."""
    folder = Path(store) / SCORES
    if not folder.is_dir() or folder.is_symlink():
        return folder, []
    return folder, sorted(n for n in os.listdir(folder) if _FILE_NAME.match(n))


def _mostly_ignored(instance: Instance, ignored: np.ndarray) -> bool:
    pixels = rle.decode(instance.rle)
    area = int(pixels.sum())
    return area > 0 and int((pixels & ignored).sum()) > INSTANCE_IGNORED_DROP * area


def _parse_line(line: bytes) -> tuple[str, SampleScore]:
    """(sample id, score) of one line; ValueError, TypeError or KeyError if it is malformed."""
    d = json.loads(line)
    sample_id, ignored = d["id"], d["ignored"]
    if not isinstance(sample_id, str) or not ID_FORM.match(sample_id):
        raise ValueError(f"id {sample_id!r} is not a sample id")
    if ignored is not None and not (isinstance(ignored, dict) and isinstance(ignored.get("size"), list)):
        raise ValueError("'ignored' is neither null nor an RLE")
    share, hardness = float(d["ignored_share"]), float(d["hardness"])
    if not (0.0 <= share <= 1.0 and math.isfinite(hardness) and hardness >= 0):
        raise ValueError(f"ignored_share {share} or hardness {hardness} out of range")
    return sample_id, SampleScore(ignored, share, hardness)


def class_weights(
    scores: Scores | None, cap: float = 3.0, class_iou: Mapping[str, float] | None = None
) -> dict[str, float]:
    """Per class name, how much more often to prompt for it: hard classes more ({} with nothing to go on).

    Two signals, each relative to its mean over the classes: the class hardness of the newest scores
    (h_c / mean h, the loss of the synthetic pixels the model keeps) and the trainer's latest validation
    IoU ((1 - IoU_c) / mean(1 - IoU), what the model still gets wrong on real data). A class with both gets
    their geometric mean, a class with one that one; the result is clipped to [1 / cap, cap]. The producer
    prompts for classes in proportion to these (see bias_prompts)."""
    factors: dict[str, list[float]] = {}
    h = {} if scores is None else dict(scores.header.get("class_hardness") or {})
    miss = {k: 1.0 - float(v) for k, v in (class_iou or {}).items() if isinstance(v, (int, float))}
    for signal in (h, miss):
        good = {k: float(v) for k, v in signal.items() if isinstance(v, (int, float)) and math.isfinite(v) and v >= 0}
        mean = sum(good.values()) / len(good) if good else 0.0
        if mean > 0:
            for k, v in good.items():
                factors.setdefault(k, []).append(v / mean)
    return {k: min(max(math.prod(f) ** (1 / len(f)), 1.0 / cap), cap) for k, f in factors.items()}


#: The file in a training run's work dir where its integration hook keeps the latest per-class validation IoU.
CLASS_IOU_FILE = "synthaug_class_iou.json"


def write_class_iou(work_dir: str | Path, iteration: int, class_iou: Mapping[str, float]) -> Path:
    """Replace the run's latest per-class validation IoU (0..1; NaN for a class absent from validation) at once."""
    path = Path(work_dir) / CLASS_IOU_FILE
    clean = {str(k): (round(float(v), 6) if math.isfinite(float(v)) else None) for k, v in class_iou.items()}
    atomic_write_bytes(
        path, (json.dumps({"iteration": int(iteration), "class_iou": clean}) + "\n").encode(), fsync=False
    )
    return path


def store_class_iou(
    class_iou: Mapping[str, float],
    vocabulary: ClassVocabulary,
    class_map: Mapping[str, str | int | None] | None = None,
) -> dict[str, float]:
    """The trainer's per-class IoU (keyed by its dataset's class names, in their order) keyed by the store's
    class names, matched as the mix matches them (normalised names, or `class_map`); classes of the dataset the
    store does not have are left out, so they do not move the mean."""
    theirs = list(class_iou)
    try:
        lut = match_classes(vocabulary, theirs, class_map, what="the trainer's validation", strict=False)
    except ValueError as err:  # an ambiguous name or a map target it lacks: no IoU signal, the producer goes on
        log.warning("synthaug: the validation IoU is not used for the hardness bias: %s", err)
        return {}
    matched = {name: class_iou[theirs[lut[i]]] for i, name in enumerate(vocabulary.names) if lut[i] != IGNORE_INDEX}
    return {name: v for name, v in matched.items() if math.isfinite(v)}  # NaN: absent from validation


def read_class_iou(work_dir: str | Path) -> dict[str, float]:
    """The run's latest per-class validation IoU, every class of the trainer's dataset in its order, NaN for a
    class absent from validation ({} if there is none yet, or it cannot be read). Every class is kept, so that
    a class map's id targets (positions in that list) still point at the right class."""
    try:
        data = json.loads((Path(work_dir) / CLASS_IOU_FILE).read_text())
        out = {}
        for k, v in data["class_iou"].items():
            if v is None:
                out[str(k)] = math.nan
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= float(v) <= 1.0:
                out[str(k)] = float(v)
            else:
                return {}  # a figure that is no IoU: the file is not ours, or corrupt
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


@dataclass(frozen=True)
class LiveScoring:
    """What the producer needs to re-score the store whenever training writes a new checkpoint.

    work_dir: the training run's output folder, where mmengine and detectron2 both keep `last_checkpoint`
    (a text file naming the newest checkpoint). every: poll after this many generated batches."""

    config: Path
    work_dir: Path
    framework: str = "mmseg"
    device: str = "cpu"
    margin: float = 1.25
    every: int = 1
    #: the model's class names where the checkpoint does not hold them (detectron2), and the mix's class map
    classes: tuple[str, ...] | None = None
    class_map: Mapping[str, str | int | None] | None = None
    #: the rule's label probability floor; None: the default of the model's kind of loss
    min_probability: float | None = None

    def __post_init__(self) -> None:
        FilterRule(margin=self.margin, min_probability=self.min_probability)  # a bad margin or floor fails at start
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"framework={self.framework!r}: scoring supports {list(FRAMEWORKS)}")
        if self.every < 1:
            raise ValueError(f"every={self.every} must be >= 1 (batches between checkpoint polls)")


class LiveScorer:
    """Scores the store with the newest checkpoint of a training run, once per checkpoint (synthaug produce)."""

    def __init__(self, store: str | Path, settings: LiveScoring) -> None:
        self.store, self.settings = Path(store), settings
        self.rule = FilterRule(margin=settings.margin, min_probability=settings.min_probability)
        self.scored: tuple[str, float] | None = None
        self.runs = 0

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint `last_checkpoint` names (relative names are taken from the work dir), if it exists."""
        marker = Path(self.settings.work_dir) / "last_checkpoint"
        try:
            name = marker.read_text().strip()
        except OSError:
            return None
        if not name:
            return None
        path = Path(name)
        if not path.is_absolute():
            path = Path(self.settings.work_dir) / path if (Path(self.settings.work_dir) / path).exists() else path
        return path if path.is_file() else None

    def poll(self) -> Path | None:
        """Score the store if a checkpoint newer than the last one scored exists; the scores file, or None.

        A checkpoint that cannot be read yet (being written) or a failed pass is logged and tried again later:
        the producer never stops over scoring."""
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            return None
        key = (str(ckpt), ckpt.stat().st_mtime)
        if key == self.scored:
            return None
        s = self.settings
        try:
            model = load_loss_model(s.framework, s.config, ckpt, s.device, s.classes)
            path = score_store(self.store, model, self.rule, tag=ckpt.stem, class_map=s.class_map)
        except Exception as err:  # an unreadable checkpoint raises whatever torch.load or the framework raises
            # Both frameworks name a checkpoint in last_checkpoint only once it is saved, so a failure is not
            # transient: the next checkpoint is tried, this one is not retried at every batch.
            log.warning("synthaug: scoring with %s failed (%s); the next checkpoint will be tried", ckpt, err)
            self.scored = key
            return None
        self.scored = key
        self.runs += 1
        log.info("synthaug: scored %s with %s: %s", self.store, ckpt, path.name)
        return path

"""Whole-store operations: verify (and repair), stats, and export to mmseg folders and COCO JSON."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthaug.imageio import mask_to_png
from synthaug.store import MANIFEST, QUARANTINE, SEGMENTS, CorruptSampleError, SampleStore


@dataclass
class VerifyReport:
    """What `verify` found: samples that do not read back, bad manifest lines, leftovers of crashed writers."""

    checked: int = 0
    corrupt: dict[str, str] = field(default_factory=dict)
    bad_lines: int = 0
    torn_tails: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    temp_files: list[str] = field(default_factory=list)
    duplicate_ids: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def clean(self) -> bool:
        return not (self.corrupt or self.bad_lines or self.duplicate_ids)

    def summary(self) -> str:
        lines = [f"checked {self.checked} samples: " + ("clean" if self.clean else "PROBLEMS FOUND")]
        for sid, reason in sorted(self.corrupt.items()):
            lines.append(f"  corrupt  {sid}: {reason}")
        if self.bad_lines:
            lines.append(f"  {self.bad_lines} manifest line(s) are not valid records")
        for sid in self.duplicate_ids:
            lines.append(f"  duplicate id {sid}")
        if self.torn_tails:
            lines.append(
                f"  {len(self.torn_tails)} manifest(s) end in a torn line from a crashed writer "
                "(invisible to readers; the writer drops it when it resumes)"
            )
        if self.orphans or self.temp_files:
            lines.append(
                f"  {len(self.orphans)} orphan file(s) and {len(self.temp_files)} temporary file(s) left by "
                "crashed writers (invisible to readers)"
                + ("; removed" if self.repaired else "; `verify --repair` removes them")
            )
        if self.corrupt and self.repaired:
            lines.append(f"  quarantined {len(self.corrupt)} corrupt sample(s) under quarantine/")
        elif self.corrupt:
            lines.append("  run `synthaug verify --repair` to quarantine the corrupt samples")
        return "\n".join(lines)


def verify(path: str | Path, repair: bool = False) -> VerifyReport:
    """Read every sample back; with `repair`, quarantine corrupt ones and delete crash leftovers."""
    store = SampleStore(path)
    report = VerifyReport(checked=len(store), bad_lines=store.stats.bad_lines)
    ids = Counter(r["id"] for r in store.records)
    report.duplicate_ids = sorted(i for i, n in ids.items() if n > 1)
    for i in range(len(store)):
        try:
            store.read(i)
        except CorruptSampleError as err:
            report.corrupt[err.sample_id] = err.reason
    referenced = {p for r in store.records for p in (r["image"], r["mask"])}
    for seg_dir in sorted((store.root / SEGMENTS).iterdir()):
        manifest = seg_dir / MANIFEST
        if manifest.exists() and manifest.stat().st_size and not manifest.read_bytes().endswith(b"\n"):
            report.torn_tails.append(seg_dir.name)
        for f in sorted((seg_dir / "samples").glob("*")) if (seg_dir / "samples").is_dir() else []:
            rel = f.relative_to(store.root).as_posix()
            if f.name.startswith(".") and f.name.endswith(".tmp"):
                report.temp_files.append(rel)
            elif rel not in referenced:
                report.orphans.append(rel)
    if repair:
        _repair(store, report)
    return report


def _repair(store: SampleStore, report: VerifyReport) -> None:
    qdir = store.root / "quarantine"
    by_id = {r["id"]: r for r in store.records}
    if report.corrupt:
        qdir.mkdir(exist_ok=True)
        with open(store.root / QUARANTINE, "a") as q:
            for sid, reason in report.corrupt.items():
                rec = by_id[sid]
                for rel in (rec["image"], rec["mask"]):
                    src = store.root / rel
                    if src.exists():
                        shutil.move(src, qdir / src.name)
                q.write(json.dumps({"id": sid, "reason": reason}) + "\n")
    # Orphans are files of samples whose record was never appended (the writer died in between).
    for rel in report.orphans + report.temp_files:
        (store.root / rel).unlink(missing_ok=True)
    report.repaired = True


def stats(path: str | Path) -> dict[str, Any]:
    """Counts per class and per segment, and the distribution of each quality figure."""
    store = SampleStore(path)
    per_class = Counter(c for r in store.records for c in r.get("classes", ()))
    per_segment = Counter(r["id"].rsplit("-", 1)[0] for r in store.records)
    quality: dict[str, list[float]] = {}
    for r in store.records:
        for k, v in r.get("quality", {}).items():
            quality.setdefault(k, []).append(float(v))
    return {
        "samples": len(store),
        "per_class": {store.vocabulary.names[c]: per_class.get(c, 0) for c in range(len(store.vocabulary))},
        "per_segment": dict(sorted(per_segment.items())),
        "quality": {
            k: {
                q: round(float(np.quantile(v, p)), 4)
                for q, p in (("min", 0), ("p10", 0.1), ("median", 0.5), ("p90", 0.9), ("max", 1))
            }
            for k, v in sorted(quality.items())
        },
        "instances": sum(len(r.get("instances", ())) for r in store.records),
        "bad_manifest_lines": store.stats.bad_lines,
    }


def format_stats(s: dict[str, Any]) -> str:
    lines = [f"samples: {s['samples']}   instances: {s['instances']}"]
    lines.append("per class (samples containing it):")
    lines += [f"  {name:<20} {n}" for name, n in s["per_class"].items()]
    lines.append("per segment:")
    lines += [f"  {seg:<40} {n}" for seg, n in s["per_segment"].items()]
    if s["quality"]:
        lines.append("quality:          min      p10   median      p90      max")
        for k, q in s["quality"].items():
            lines.append(f"  {k:<14}" + "".join(f"{q[x]:>9.3f}" for x in ("min", "p10", "median", "p90", "max")))
    if s["bad_manifest_lines"]:
        lines.append(f"bad manifest lines: {s['bad_manifest_lines']}")
    return "\n".join(lines)


def export(path: str | Path, out: str | Path, fmt: str, split: str = "train") -> int:
    """Write the store as mmseg folders (img_dir/ann_dir) or COCO JSON (+ images); returns samples written.

    Corrupt samples are skipped and reported on stderr, never exported.
    """
    if fmt not in ("mmseg", "coco"):
        raise ValueError(f"format={fmt!r}: use 'mmseg' or 'coco'")
    store = SampleStore(path)
    out = Path(out)
    img_dir = out / ("img_dir" if fmt == "mmseg" else "images") / split
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir = out / "ann_dir" / split
    if fmt == "mmseg":
        ann_dir.mkdir(parents=True, exist_ok=True)
    vocab = store.vocabulary
    coco: dict[str, Any] = {
        "images": [],
        "annotations": [],
        "categories": [{"id": i, "name": n} for i, n in enumerate(vocab.names) if i in vocab.foreground_ids],
    }
    written = 0
    for i in range(len(store)):
        sample = store.try_read(i)
        if sample is None:
            continue
        rec = store.records[i]
        src = store.root / rec["image"]
        name = Path(rec["image"]).name
        _link_or_copy(src, img_dir / name)
        if fmt == "mmseg":
            mask_to_png(sample.mask, vocab.palette).save(ann_dir / f"{sample.id}.png")
        else:
            image_id = len(coco["images"]) + 1
            coco["images"].append(
                {
                    "id": image_id,
                    "file_name": f"{split}/{name}",
                    "height": rec["height"],
                    "width": rec["width"],
                    "prompt": sample.prompt,
                    "seed": sample.seed,
                }
            )
            for inst in sample.instances:
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": image_id,
                        "category_id": inst.class_id,
                        "segmentation": inst.rle,
                        "area": inst.area,
                        "bbox": inst.bbox,
                        "iscrowd": 0,
                        **({"score": inst.score} if inst.score is not None else {}),
                    }
                )
        written += 1
    if fmt == "coco":
        (out / "annotations").mkdir(exist_ok=True)
        (out / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    if fmt == "mmseg":
        (out / "classes.json").write_text(json.dumps(vocab.to_dict(), indent=2) + "\n")
    for sid, reason in store.stats.corrupt.items():
        print(f"skipped corrupt sample {sid}: {reason}", flush=True)
    return written


def _link_or_copy(src: Path, dst: Path) -> None:
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)

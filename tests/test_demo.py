"""The README's main command, small: generate, annotate, store, gallery, one mix epoch, mmseg training twice."""

from __future__ import annotations

import importlib.util
import json

import pytest

from synthaug.cli import main as cli
from synthaug.demo_training import parse_log
from synthaug.store import SampleStore


def test_demo_without_training(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--num", "6", "--steps", "8", "--out", str(out), "--no-train"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 6
    # Refinement sharpens the raw attention masks against the colour truth, on the same 6 images.
    assert report["refined_miou_vs_colour_truth"] > report["mask_miou_vs_colour_truth"] > 0.5, report
    assert len(SampleStore(out / "data" / "toy_store")) == 6
    assert (out / "gallery" / "index.html").exists() and (out / "contact_sheet.png").exists()
    mix = report["mix_epoch"]
    assert mix["served_real"] == 20 and mix["served_synthetic"] == 9  # round(20 * 0.3 / 0.7)
    printed = capsys.readouterr().out
    assert "with edge refinement" in printed and "mix at ratio 0.3" in printed and "training" not in report


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mmseg") is None, reason="needs synthaug[mmseg]")
def test_demo_trains_real_only_and_mixed_with_mmseg(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--num", "8", "--steps", "5", "--out", str(out), "--train-iters", "20", "--real", "4"]
    assert cli(args) == 0
    report = json.loads((out / "report.json").read_text())
    real, mixed = report["training"]["real_only"], report["training"]["real+synthetic"]
    assert real["synthetic_served"] == 0 and mixed["synthetic_served"] > 0
    assert set(real["per_class_iou"]) == {"background", "circle", "square", "triangle"}
    for run in (real, mixed):  # the report's mIoU is the mean of the per-class IoUs it shows
        assert run["miou"] == pytest.approx(sum(run["per_class_iou"].values()) / 4, abs=0.01), run
    assert 0.3 < mixed["synthetic_served"] / mixed["images_seen"] < 0.7  # ratio 0.5
    printed = capsys.readouterr().out
    assert "scored on 100 held-out real images" in printed and "images seen (synthetic)" in printed


def test_parse_log_reads_the_last_validation():
    log = """per class results:
+------------+-------+-------+
|   Class    |  IoU  |  Acc  |
+------------+-------+-------+
| background | 83.05 | 100.0 |
|   circle   |  0.0  |  0.0  |
+------------+-------+-------+
Iter(val) [7/7]    aAcc: 83.0500  mIoU: 20.7600  mAcc: 25.0000
Iter(train) [20/20] loss: 0.5  synthaug_served_synthetic: 96.0000  synthaug_pool_size: 32.0000
"""
    per_class, miou, scalars = parse_log(log)
    assert per_class == {"background": 83.05, "circle": 0.0} and miou == 20.76
    assert scalars["synthaug_served_synthetic"] == 96.0

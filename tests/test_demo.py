"""The README's main command, small: generate, annotate, store, gallery, one mix epoch, report."""

from __future__ import annotations

import json

from synthaug.cli import main as cli
from synthaug.store import SampleStore


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli(["demo", "--num", "6", "--steps", "8", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["images"] == 6 and 0 <= report["refined_miou_vs_colour_truth"] <= 1
    assert len(SampleStore(out / "store")) == 6
    assert (out / "gallery" / "index.html").exists() and (out / "contact_sheet.png").exists()
    mix = report["mix_epoch"]
    assert mix["served_real"] == 20 and mix["served_synthetic"] == 9  # round(20 * 0.3 / 0.7)
    printed = capsys.readouterr().out
    assert "with edge refinement" in printed and "mix at ratio 0.3" in printed

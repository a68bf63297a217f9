"""The demo's training comparison: mmseg's own tools/train.py, real-only against real + synthetic.

It runs as subprocesses (the core never imports mmseg): the same toy config twice, once as is
and once with the lines that add synthaug (`configs/mmseg/toy_fcn_{real,mix}.py`), on a few real
toy images, then reads each run's final validation on held-out real images from its log.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "mmseg"
_CLASS_ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*([\d.]+|nan)\s*\|\s*([\d.]+|nan)\s*\|$")
_VAL_MIOU = re.compile(r"Iter\(val\).*\bmIoU: ([\d.]+)")
_SCALAR = re.compile(r"(synthaug_\w+|mIoU): ([\d.]+)")


@dataclass
class TrainingResult:
    """What one run reported: per-class IoU and mIoU (0-100) on the validation images, images seen, time."""

    name: str
    per_class: dict[str, float] = field(default_factory=dict)
    miou: float = float("nan")
    images_seen: int = 0
    synthetic_served: int = 0
    wall_s: float = 0.0
    log: Path | None = None
    scalars: dict[str, float] = field(default_factory=dict)  # the last synthaug_* figures the log shows


def mmseg_train_script() -> Path:
    """mmseg's own tools/train.py, shipped inside the mmseg wheel."""
    spec = importlib.util.find_spec("mmseg")
    if spec is None or spec.origin is None:
        raise RuntimeError("the training demo needs MMSegmentation: pip install 'synthaug[mmseg]' (or --no-train)")
    script = Path(spec.origin).parent / ".mim" / "tools" / "train.py"
    if not script.exists():
        raise RuntimeError(f"{script} is missing: reinstall mmsegmentation 1.2.x from its wheel")
    return script


def parse_log(text: str) -> tuple[dict[str, float], float, dict[str, float]]:
    """The last per-class table, the last mIoU and the last synthaug scalars in an mmengine log."""
    per_class: dict[str, float] = {}
    for line in text.splitlines():
        if "per class results" in line:
            per_class = {}
        m = _CLASS_ROW.match(line.strip())
        if m and m.group(1) != "Class":
            per_class[m.group(1)] = float(m.group(2))
    scalars: dict[str, float] = {}
    for line in text.splitlines():
        for key, value in _SCALAR.findall(line):
            scalars[key] = float(value)
    return per_class, scalars.get("mIoU", float("nan")), scalars


def train(
    workdir: Path,
    config: str | Path,
    iters: int,
    batch: int,
    name: str,
    options: Sequence[str] = (),
    val_interval: int | None = None,
    quiet: bool = False,
) -> TrainingResult:
    """Run tools/train.py on `config` (a name in configs/mmseg, or a path) in `workdir` (which holds data/).

    `options` are further `--cfg-options` (key=value); `val_interval` validates more often than once at
    the end (the log then holds every validation, see `validation_curve`); `quiet` prints no progress.
    """
    cmd = [
        sys.executable,
        str(mmseg_train_script()),
        str(config if Path(config).is_absolute() else CONFIG_DIR / config),
        "--work-dir",
        str(workdir / "work_dirs" / name),
        "--cfg-options",
        f"train_cfg.max_iters={iters}",
        f"train_cfg.val_interval={val_interval or iters}",
        f"train_dataloader.batch_size={batch}",
        f"param_scheduler.0.end={iters}",
        f"default_hooks.checkpoint.interval={iters}",
        f"default_hooks.logger.interval={max(1, iters // 10)}",
        *options,
    ]
    log_path = workdir / f"train_{name}.log"
    if not quiet:
        print(
            f"[demo] training '{name}': mmseg tools/train.py {config}, {iters} iterations (log: {log_path})", flush=True
        )
    t0 = time.perf_counter()
    lines: list[str] = []
    with (
        open(log_path, "w") as log,
        subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            lines.append(line)
            if "Iter(train)" in line and not quiet:
                it = re.search(r"Iter\(train\) \[\s*(\d+)/(\d+)\]", line)
                loss = re.search(r" loss: ([\d.]+)", line)
                if it:
                    print(
                        f"[demo]   {name}: iteration {it.group(1)}/{it.group(2)}"
                        + (f", loss {loss.group(1)}" if loss else ""),
                        flush=True,
                    )
    if proc.returncode != 0:
        tail = "".join(lines[-30:])
        raise RuntimeError(f"training '{name}' failed (exit {proc.returncode}); end of {log_path}:\n{tail}")
    per_class, miou, scalars = parse_log("".join(lines))
    return TrainingResult(
        name,
        per_class,
        miou,
        images_seen=iters * batch,
        synthetic_served=int(scalars.get("synthaug_served_synthetic", 0)),
        wall_s=time.perf_counter() - t0,
        log=log_path,
        scalars=scalars,
    )


def compare(workdir: Path, iters: int = 600, batch: int = 8) -> list[TrainingResult]:
    """Real-only, then real + synthetic, on `workdir/data/toy` (+ `workdir/data/toy_store`)."""
    return [
        train(workdir, "toy_fcn_real.py", iters, batch, "real_only"),
        train(workdir, "toy_fcn_mix.py", iters, batch, "real+synthetic"),
    ]


def validation_curve(text: str, val_interval: int) -> list[tuple[int, float]]:
    """(iteration, mIoU) of every validation in the log of an iteration-based run validated every `val_interval`."""
    return [((k + 1) * val_interval, float(v)) for k, v in enumerate(_VAL_MIOU.findall(text))]


def format_comparison(results: list[TrainingResult], n_real: int, n_val: int) -> str:
    """The table the demo prints: IoU per class and mIoU on held-out real images, images seen, wall time."""
    names = list(results[0].per_class) or ["background"]
    width = max(len(n) for n in [*names, "images seen (synthetic)"]) + 2
    head = f"{'':<{width}}" + "".join(f"{r.name:>18}" for r in results)
    rows = [f"trained on {n_real} real toy images; scored on {n_val} held-out real images (IoU, %)", head]
    for n in names:
        rows.append(f"{'IoU ' + n:<{width}}" + "".join(f"{r.per_class.get(n, float('nan')):>18.2f}" for r in results))
    rows.append(f"{'mIoU':<{width}}" + "".join(f"{r.miou:>18.2f}" for r in results))
    rows.append(
        f"{'images seen (synthetic)':<{width}}"
        + "".join(f"{f'{r.images_seen} ({r.synthetic_served})':>18}" for r in results)
    )
    rows.append(f"{'wall time, s':<{width}}" + "".join(f"{r.wall_s:>18.0f}" for r in results))
    return "\n".join(rows)

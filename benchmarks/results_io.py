"""Where a benchmark writes its JSON: one file per configuration, so that no run overwrites another's.

result_path("toy_model_fidelity", scheduler="DDIMScheduler", steps=25)
-> benchmarks/results/toy_model_fidelity__scheduler-DDIMScheduler__steps-25.json
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def result_path(name: str, **config: Any) -> Path:
    """The artefact of benchmark `name` run with `config` (keys in the order given; None values left out)."""
    parts = [name] + [f"{k}-{_slug(v)}" for k, v in config.items() if v is not None]
    return RESULTS / ("__".join(parts) + ".json")


def write_result(path: Path, result: dict[str, Any]) -> Path:
    """Write `result` as indented JSON at `path` (folders made as needed) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


def _slug(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(_slug(v) for v in value)
    text = Path(value).name if isinstance(value, Path) else str(value)
    return re.sub(r"[^A-Za-z0-9.]+", "_", text).strip("_") or "none"

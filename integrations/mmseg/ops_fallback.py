"""Make mmseg importable on mmcv-lite: a pure-PyTorch stand-in for the few `mmcv.ops` that mmseg imports.

mmcv-lite ships mmcv's Python sources without the compiled `mmcv._ext`, and several mmseg
modules import `from mmcv.ops import point_sample` (and `sigmoid_focal_loss`) unguarded, so
`import mmseg.models` fails. When `mmcv._ext` is missing this installs a module `mmcv.ops`
that serves `point_sample` and `bilinear_grid_sample` from mmcv's own pure-PyTorch source file,
a pure-PyTorch `sigmoid_focal_loss`, and a clear ModuleNotFoundError for every other op (mmseg
guards those imports: CCHead, PSAHead, DCN need full mmcv). With full mmcv it does nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
FULL_MMCV_HINT = (
    "it needs mmcv's compiled ops, which mmcv-lite lacks: install full mmcv 2.1.0 "
    "(pip install 'synthaug[mmseg-full]' with OpenMMLab's wheel index, or `mim install mmcv==2.1.0`)"
)


def sigmoid_focal_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    gamma: float = 2.0,
    alpha: float = 0.25,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """mmcv's sigmoid focal loss in plain PyTorch: (N, C) logits, (N,) class targets (C = background)."""
    num_classes = pred.size(1)
    onehot = F.one_hot(target.long(), num_classes + 1)[:, :num_classes].type_as(pred)
    p = pred.sigmoid()
    pt = (1 - p) * onehot + p * (1 - onehot)
    w = (alpha * onehot + (1 - alpha) * (1 - onehot)) * pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(pred, onehot, reduction="none") * w
    if weight is not None:
        loss = loss * weight.view(-1, 1)
    if reduction == "mean":
        return loss.mean()
    return loss.sum() if reduction == "sum" else loss


def mmcv_has_compiled_ops() -> bool:
    return importlib.util.find_spec("mmcv._ext") is not None


def ensure_mmseg_importable() -> bool:
    """Install the stand-in `mmcv.ops` if mmcv's compiled ops are missing; True if it did (or had)."""
    existing = sys.modules.get("mmcv.ops")
    if getattr(existing, "__synthaug_fallback__", False):
        return True
    if mmcv_has_compiled_ops():
        return False
    import mmcv

    source = Path(mmcv.__file__).parent / "ops" / "point_sample.py"
    ops = types.ModuleType("mmcv.ops", "synthaug's pure-PyTorch stand-in for mmcv.ops on mmcv-lite")
    ops.__synthaug_fallback__ = True  # type: ignore[attr-defined]
    ops.__path__ = []  # a package, so that `mmcv.ops.xyz` submodule imports fail cleanly
    sys.modules["mmcv.ops"] = ops
    spec = importlib.util.spec_from_file_location("mmcv.ops.point_sample", source)
    assert spec is not None and spec.loader is not None
    point_sample = importlib.util.module_from_spec(spec)
    sys.modules["mmcv.ops.point_sample"] = point_sample
    spec.loader.exec_module(point_sample)
    ops.point_sample = point_sample.point_sample  # type: ignore[attr-defined]
    ops.bilinear_grid_sample = point_sample.bilinear_grid_sample  # type: ignore[attr-defined]
    ops.sigmoid_focal_loss = sigmoid_focal_loss  # type: ignore[attr-defined]

    def missing(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise ModuleNotFoundError(f"mmcv.ops.{name} is not available: {FULL_MMCV_HINT}")

    ops.__getattr__ = missing  # type: ignore[attr-defined]
    mmcv.ops = ops  # type: ignore[attr-defined]
    log.warning(
        "synthaug: mmcv's compiled ops are missing (mmcv-lite); using pure-PyTorch point_sample and "
        "sigmoid_focal_loss. Models that need other mmcv ops (CCHead, PSAHead, DCN) need full mmcv."
    )
    return True

"""Make mmseg importable on mmcv-lite: a pure-PyTorch stand-in for the few `mmcv.ops` that mmseg imports.

mmcv-lite ships mmcv's Python sources without the compiled `mmcv._ext`, and several mmseg
modules import `from mmcv.ops import point_sample` (and `sigmoid_focal_loss`) unguarded, so
`import mmseg.models` fails. When `mmcv._ext` is missing this installs a module `mmcv.ops`
that serves `point_sample` and `bilinear_grid_sample` from mmcv's own pure-PyTorch source file,
a pure-PyTorch `sigmoid_focal_loss`, mmcv's own multi-scale deformable attention on its pure-PyTorch
path (Mask2Former's pixel decoder, through mmdet), stand-ins that fail when used for the compiled ops
mmdet imports at start, and a clear ModuleNotFoundError for every other op (mmseg guards those
imports: CCHead, PSAHead, DCN need full mmcv). With full mmcv it does nothing.
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
    add_mmdet_stand_ins(ops, Path(mmcv.__file__).parent / "ops")
    log.warning(
        "synthaug: mmcv's compiled ops are missing (mmcv-lite); using pure-PyTorch point_sample, "
        "sigmoid_focal_loss and multi-scale deformable attention (Mask2Former's pixel decoder). Models that "
        "need other mmcv ops (CCHead, PSAHead, DCN, RoI ops, NMS) need full mmcv."
    )
    return True


#: What `import mmdet.models` takes from mmcv.ops at start without a guard, by submodule ('' = mmcv.ops itself).
#: They are stand-ins that fail with FULL_MMCV_HINT when built or called: mmdet imports, and the models that do
#: not use them (Mask2Former) run.
MMDET_NAMES: dict[str, tuple[str, ...]] = {
    "": ("batched_nms", "nms", "nms_match", "DeformConv2d", "deform_conv2d", "ModulatedDeformConv2d",
         "modulated_deform_conv2d", "MaskedConv2d", "CornerPool", "RoIPool", "RoIAlign", "roi_align",
         "CARAFEPack", "rel_roi_point_to_rel_img_point", "SAConv2d", "DeformRoIPoolPack",
         "ModulatedDeformRoIPoolPack"),
    "nms": ("batched_nms", "nms", "nms_match"),
    "roi_align": ("roi_align", "RoIAlign"),
    "modulated_deform_conv": ("ModulatedDeformConv2d", "modulated_deform_conv2d", "ModulatedDeformConv2dPack"),
    "deform_conv": ("DeformConv2d", "deform_conv2d", "DeformConv2dPack"),
    "carafe": ("CARAFEPack",),
}  # fmt: skip


def stand_in(name: str, where: str):
    """A class (so that subclassing at import works) or a function that fails naming the op when used."""

    def fail(*args, **kwargs):
        raise ModuleNotFoundError(f"{where}.{name} is not available: {FULL_MMCV_HINT}")

    if name[:1].isupper():
        return type(name, (torch.nn.Module,), {"__init__": fail, "__module__": where, "__synthaug_stand_in__": True})
    fail.__name__ = name
    fail.__synthaug_stand_in__ = True  # type: ignore[attr-defined]
    return fail


def load_source(name: str, path: Path) -> types.ModuleType:
    """Execute one of mmcv's own pure-Python op files as module `name` (registered in sys.modules)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def add_mmdet_stand_ins(ops: types.ModuleType, source: Path) -> None:
    """What mmdet (Mask2Former in mmseg) needs of mmcv.ops on mmcv-lite: mmcv's own multi-scale deformable
    attention (its pure-PyTorch path, always: the CUDA kernel is missing), mmcv's own merge_cells (plain
    Python), and stand-ins for the compiled ops mmdet imports at start."""
    for sub, names in MMDET_NAMES.items():
        module = ops
        if sub:
            module = types.ModuleType(f"mmcv.ops.{sub}", "synthaug stand-ins: this op needs full mmcv")
            sys.modules[module.__name__] = module
            if sub not in ops.__dict__:  # as in mmcv, a function of the same name (nms, roi_align) wins
                setattr(ops, sub, module)
        for name in names:
            setattr(module, name, ops.__dict__.get(name) or stand_in(name, module.__name__))
    from mmcv.utils import ext_loader

    real_load_ext = ext_loader.load_ext

    def no_kernels(name: str, funcs: list[str]) -> types.SimpleNamespace:
        return types.SimpleNamespace(**{f: stand_in(f, "mmcv._ext") for f in funcs})

    ext_loader.load_ext = no_kernels  # only while mmcv's own op file loads
    try:
        msda = load_source("mmcv.ops.multi_scale_deform_attn", source / "multi_scale_deform_attn.py")
    finally:
        ext_loader.load_ext = real_load_ext
    msda.IS_CUDA_AVAILABLE = False  # the forward takes multi_scale_deformable_attn_pytorch on every device
    msda.IS_MLU_AVAILABLE = False
    ops.multi_scale_deform_attn = msda  # type: ignore[attr-defined]
    ops.MultiScaleDeformableAttention = msda.MultiScaleDeformableAttention  # type: ignore[attr-defined]
    bricks = sys.modules.get("mmcv.cnn.bricks.transformer")
    if bricks is not None and not hasattr(bricks, "MultiScaleDeformableAttention"):
        # imported before us, its re-export of the class failed unseen; mmdet's pixel decoder imports it from
        # there, and mmseg's heads catch only ModuleNotFoundError: `import mmseg.models` would fail
        bricks.MultiScaleDeformableAttention = msda.MultiScaleDeformableAttention
    ops.multi_scale_deformable_attn_pytorch = msda.multi_scale_deformable_attn_pytorch  # type: ignore[attr-defined]
    ops.merge_cells = load_source("mmcv.ops.merge_cells", source / "merge_cells.py")  # type: ignore[attr-defined]

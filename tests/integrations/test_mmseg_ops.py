"""The mmcv-lite stand-ins that let mmdet (mmseg's Mask2Former) import and train without mmcv's compiled ops."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("mmseg")

import synthaug.integrations.mmseg  # noqa: F401  (installs the stand-ins on mmcv-lite)
from msda_reference import assert_matches_reference
from synthaug.integrations.mmseg.ops_fallback import mmcv_has_compiled_ops

pytestmark = pytest.mark.skipif(mmcv_has_compiled_ops(), reason="full mmcv: its own compiled ops are used")


def test_pure_pytorch_deformable_attention_equals_the_reference_formula():
    from mmcv.ops import multi_scale_deformable_attn_pytorch

    assert_matches_reference(multi_scale_deformable_attn_pytorch)


def test_mask2formers_deformable_attention_is_mmcvs_own_module_on_the_pure_pytorch_path():
    """The class mmdet builds (through mmcv.ops and mmengine's registry, and mmcv.cnn's re-export) is mmcv's
    own MultiScaleDeformableAttention, whose forward takes the pure-PyTorch path: it runs on the CPU."""
    import mmcv.ops
    from mmcv.cnn.bricks.transformer import MultiScaleDeformableAttention as from_cnn
    from mmengine.registry import MODELS

    cls = mmcv.ops.MultiScaleDeformableAttention
    assert cls is from_cnn and MODELS.get("MultiScaleDeformableAttention") is cls
    assert (
        cls.__module__ == "mmcv.ops.multi_scale_deform_attn" and not mmcv.ops.multi_scale_deform_attn.IS_CUDA_AVAILABLE
    )
    attn = cls(embed_dims=16, num_heads=2, num_levels=2, num_points=2, batch_first=True)
    shapes = torch.tensor([[4, 4], [2, 2]])
    query = torch.randn(1, 20, 16)
    out = attn(
        query,
        value=query,
        reference_points=torch.rand(1, 20, 2, 2),
        spatial_shapes=shapes,
        level_start_index=torch.tensor([0, 16]),
    )
    assert out.shape == (1, 20, 16) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("module", "name", "args"),
    [("mmcv.ops", "batched_nms", ()), ("mmcv.ops.nms", "nms", ()), ("mmcv.ops", "DeformConv2d", (4, 4, 3))],
)
def test_compiled_ops_mmdet_imports_at_start_fail_when_used_naming_full_mmcv(module, name, args):
    import importlib

    op = getattr(importlib.import_module(module), name)
    with pytest.raises(ModuleNotFoundError, match="full mmcv"):
        op(*args)


def test_mmcv_transformer_imported_before_synthaug_still_lets_mmseg_models_import():
    """A user's module that imports mmcv.cnn.bricks.transformer before synthaug's integration (common in
    custom_imports): that module's re-export of the deformable attention failed unseen, and mmdet's pixel
    decoder imports it from there; mmseg's heads catch only ModuleNotFoundError, so mmseg.models broke."""
    import subprocess
    import sys

    code = (
        "import mmcv.cnn.bricks.transformer as t\n"
        "import synthaug.integrations.mmseg\n"
        "import mmseg.models, mmdet.models\n"
        "from mmcv.ops import MultiScaleDeformableAttention as M\n"
        "assert t.MultiScaleDeformableAttention is M\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip().endswith("ok"), run.stderr[-2000:]

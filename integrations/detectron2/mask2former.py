"""Mask2Former for detectron2 (the ``maskformer2`` package) on what this machine has, each change logged.

``import_mask2former()`` imports the package after three adjustments, each made only where needed:

- detectron2 built without its compiled ``_C`` (the pure-Python route): ``mask2former`` imports
  ``detectron2.evaluation.fast_eval_api``, which needs ``_C``. A stand-in whose ``COCOeval_opt`` is
  pycocotools' ``COCOeval`` (what detectron2's own COCOEvaluator falls back to) takes its place.
- the ``MultiScaleDeformableAttention`` op not compiled (no CUDA build): the pixel decoder's attention
  function is the package's own pure-PyTorch ``ms_deform_attn_core_pytorch``, in place of the missing op,
  which the package would otherwise reach only by failing into a bare ``except`` on every call.
- maskformer2 0.1 as published on PyPI: its ``SetCriterion`` takes ``class_weight, mask_weight, dice_weight,
  num_layers`` while its own ``MaskFormer.from_config`` passes ``weight_dict`` (a TypeError when the model is
  built). The model's call is translated into the same weights.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import sys
import types
from typing import Any

log = logging.getLogger(__name__)
#: What import_mask2former() stood in for, in words (log_stand_ins writes them to a logger set up later).
STAND_INS: list[str] = []


def stood_in(message: str) -> None:
    """Log a stand-in now (stderr before any logging set-up) and keep it for log_stand_ins."""
    if message not in STAND_INS:
        STAND_INS.append(message)
    log.warning(message)


def log_stand_ins(logger: logging.Logger) -> None:
    """Write what import_mask2former() stood in for to `logger` (e.g. detectron2's, once it writes log.txt)."""
    for message in STAND_INS:
        logger.warning(message)


INSTALL_HINT = (
    "Mask2Former for detectron2 is the `maskformer2` package (import name `mask2former`). `python "
    "tools/setup_env.py` installs it beside detectron2; by hand: `pip install 'timm>=1.0,<2'` and then `pip install --no-deps "
    "--no-build-isolation maskformer2==0.1` (its declared dependencies are GitHub archives; detectron2 comes "
    "from synthaug's detectron2 route). A checkout of facebookresearch/Mask2Former works too where its "
    "MultiScaleDeformableAttention op is compiled (its import fails without it)."
)


def import_mask2former() -> types.ModuleType:
    """The `mask2former` package, importable and trainable here (module docstring); repeating it is harmless."""
    if "mask2former" not in sys.modules and importlib.util.find_spec("mask2former") is None:
        raise ImportError(f"mask2former is not installed. {INSTALL_HINT}")
    add_fast_eval_stand_in()
    module = importlib.import_module("mask2former")
    route_deformable_attention(
        importlib.import_module("mask2former.modeling.pixel_decoder.ops.functions.ms_deform_attn_func"),
        importlib.import_module("mask2former.modeling.pixel_decoder.ops.modules.ms_deform_attn"),
    )
    adapt_criterion(importlib.import_module("mask2former.maskformer_model"))
    return module


def detectron2_compiled() -> bool:
    """Whether detectron2's compiled ops (`detectron2._C`) import."""
    try:
        importlib.import_module("detectron2._C")
    except ImportError:
        return False
    return True


def add_fast_eval_stand_in() -> bool:
    """Without detectron2._C: `detectron2.evaluation.fast_eval_api` as pycocotools' COCOeval (same API, slower).
    Returns whether the stand-in is in place."""
    name = "detectron2.evaluation.fast_eval_api"
    if getattr(sys.modules.get(name), "SYNTHAUG_STAND_IN", False):
        return True
    if detectron2_compiled():
        return False
    from pycocotools.cocoeval import COCOeval

    stand_in = types.ModuleType(name, "synthaug's stand-in: detectron2 was built without _C; COCOeval_opt = COCOeval")
    stand_in.COCOeval_opt = COCOeval
    stand_in.SYNTHAUG_STAND_IN = True
    sys.modules[name] = stand_in
    stood_in(
        "synthaug: detectron2 has no compiled _C here: Mask2Former's instance evaluator uses pycocotools' COCOeval "
        "in place of detectron2's fast COCOeval_opt (same figures, slower)"
    )
    return True


class PyTorchMSDeformAttnFunction:
    """MSDeformAttnFunction's interface on the package's own pure-PyTorch computation (no compiled op needed):
    bilinear sampling of each level at the sampling locations, weighted by the attention weights."""

    def __init__(self, core: Any) -> None:
        self.core = core

    def apply(self, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, im2col_step):
        # level_start_index and im2col_step only lay out the compiled kernel's work
        return self.core(value, spatial_shapes, sampling_locations, attention_weights)


def route_deformable_attention(functions: types.ModuleType, modules: types.ModuleType) -> str:
    """Point the pixel decoder's MSDeformAttn at the pure-PyTorch path when the compiled op is missing
    (`functions.MSDA` is None); leave the compiled path alone otherwise. Returns 'compiled' or 'pytorch'."""
    if getattr(functions, "MSDA", None) is not None:
        return "compiled"
    if not isinstance(modules.MSDeformAttnFunction, PyTorchMSDeformAttnFunction):
        modules.MSDeformAttnFunction = PyTorchMSDeformAttnFunction(functions.ms_deform_attn_core_pytorch)
        stood_in(
            "synthaug: Mask2Former's MultiScaleDeformableAttention op is not compiled here: its pixel decoder runs "
            "the pure-PyTorch multi-scale deformable attention (the same computation; slower, more memory)"
        )
    return "pytorch"


def adapt_criterion(model_module: types.ModuleType) -> bool:
    """maskformer2 0.1 (PyPI): give MaskFormer.from_config a SetCriterion that takes its `weight_dict`. Returns
    whether the adapter is in place (False where the package's criterion already takes weight_dict)."""
    criterion = model_module.SetCriterion
    if getattr(criterion, "SYNTHAUG_ADAPTER", False):
        return True
    params = inspect.signature(criterion.__init__).parameters
    if "weight_dict" in params or "class_weight" not in params:
        return False

    class SetCriterion(criterion):
        """The package's SetCriterion, built from the weight_dict its own MaskFormer.from_config passes."""

        SYNTHAUG_ADAPTER = True

        def __init__(self, num_classes, matcher, weight_dict, eos_coef, losses, **rest):
            layers = sum(1 for k in weight_dict if k.startswith("loss_ce_"))  # deep supervision: one set a layer
            super().__init__(
                num_classes,
                matcher,
                class_weight=weight_dict["loss_ce"],
                mask_weight=weight_dict["loss_mask"],
                dice_weight=weight_dict["loss_dice"],
                num_layers=layers,
                eos_coef=eos_coef,
                losses=losses,
                **rest,
            )
            if self.weight_dict != weight_dict:
                raise ValueError(
                    f"mask2former's SetCriterion made the loss weights {self.weight_dict}, not the model's "
                    f"{weight_dict}: this maskformer2 is neither 0.1 from PyPI nor upstream Mask2Former"
                )

    model_module.SetCriterion = SetCriterion
    stood_in(
        "synthaug: this maskformer2's SetCriterion does not take the weight_dict its own MaskFormer passes "
        "(maskformer2 0.1 on PyPI): the criterion is built from the same weights through an adapter"
    )
    return True

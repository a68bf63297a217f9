"""synthaug for MMSegmentation: add `custom_imports=dict(imports=['synthaug.integrations.mmseg'])` to a config.

Importing this module (once; repeating it is harmless):
- makes mmseg importable on mmcv-lite (a pure-PyTorch `mmcv.ops` stand-in, logged), and does
  nothing with full mmcv;
- lets torch's weights-only loading read mmengine checkpoints, so `--resume` and `init_model`
  work without TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD;
- registers `SyntheticMixSegDataset` (DATASETS), `SynthaugBlur` and `SynthaugPaste` (TRANSFORMS)
  `SyntheticPoolHook` (HOOKS) and `SynthaugBatchSampler` (DATA_SAMPLERS) in mmseg's registries.
"""

from __future__ import annotations

from synthaug.integrations.mmseg.ops_fallback import ensure_mmseg_importable

ensure_mmseg_importable()  # before anything imports mmseg.models / mmseg.utils

from synthaug.integrations.mmseg.checkpoints import allow_mmengine_checkpoints  # noqa: E402

allow_mmengine_checkpoints()

from synthaug.integrations.mmseg.dataset import SyntheticMixSegDataset  # noqa: E402
from synthaug.integrations.mmseg.hooks import SyntheticPoolHook, SyntheticProducerHook, find_mix  # noqa: E402
from synthaug.integrations.mmseg.sampler import SynthaugBatchSampler  # noqa: E402
from synthaug.integrations.mmseg.transforms import SynthaugBlur, SynthaugPaste  # noqa: E402

__all__ = [
    "SynthaugBatchSampler",
    "SynthaugBlur",
    "SynthaugPaste",
    "SyntheticMixSegDataset",
    "SyntheticPoolHook",
    "SyntheticProducerHook",
    "allow_mmengine_checkpoints",
    "ensure_mmseg_importable",
    "find_mix",
]

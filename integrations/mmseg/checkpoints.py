"""Let torch's weights-only loading read mmengine checkpoints, so resume and init_model work unchanged.

torch >= 2.6 loads with ``weights_only=True`` by default, and mmengine checkpoints hold the
message hub's HistoryBuffers and numpy scalars and arrays in their metadata. Those are plain
data, so they are allow-listed (the documented alternative to TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD).
A HistoryBuffer, pickled the default way, also drags in references to its statistics methods,
which only ``builtins.getattr`` could rebuild, and allow-listing getattr would let a checkpoint
reach any attribute of an allowed class. So HistoryBuffers are pickled from their data alone
(its two arrays and max length). Checkpoints written by runs without synthaug still need
``weights_only=False``.
"""

from __future__ import annotations

import copyreg

import numpy as np
import torch


def mmengine_checkpoint_globals() -> list:
    """The classes and functions an mmengine training checkpoint needs beyond tensors and builtins."""
    from mmengine.logging import HistoryBuffer

    dtypes = {type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool", "uint8")}
    multiarray = getattr(np, "_core", np.core).multiarray  # numpy 2 moved it; pickles name either
    return [HistoryBuffer, np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar, *dtypes]


def _reduce_history_buffer(buf) -> tuple:
    return type(buf), (buf._log_history, buf._count_history, buf.max_length)


def allow_mmengine_checkpoints() -> None:
    """Allow-list mmengine's checkpoint metadata for torch.load(weights_only=True); safe to repeat."""
    from mmengine.logging import HistoryBuffer

    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
    torch.serialization.add_safe_globals(mmengine_checkpoint_globals())

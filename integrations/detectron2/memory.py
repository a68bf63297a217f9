"""In-memory files for synthetic items: ``synthaug-mem://`` paths that detectron2's ``PathManager`` opens.

A served synthetic sample may differ from its files in the store (splice and blur act in memory, class
ids are mapped into the real dataset's id space), yet every detectron2 mapper reads images and
``sem_seg`` masks through ``detectron2.data.detection_utils.read_image`` -> ``PathManager.open``. So the
dataset dict names an in-memory file: the mix encodes the arrays uncompressed (PPM for RGB, PGM for masks,
read back exactly, class ids and all) into a small per-process cache, and this handler serves them.
detectron2's ``MapDataset`` maps an item in the process that read it, so the names resolve; the mapper
wrapper drops the files once the item is mapped, and the cache keeps at most ``MAX_FILES`` in any case.
"""

from __future__ import annotations

import io
import itertools
import os
from collections import OrderedDict
from typing import Any

import numpy as np
from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler
from PIL import Image

PREFIX = "synthaug-mem://"
MAX_FILES = 32  # a safety bound: the mapper wrapper drops each item's files as soon as it is mapped

_files: OrderedDict[str, bytes] = OrderedDict()
_names = itertools.count()


class MemoryPathHandler(PathHandler):
    """Serves the encoded arrays of ``put()`` for reading ("rb"); nothing else."""

    def _get_supported_prefixes(self) -> list[str]:
        return [PREFIX]

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs: Any) -> io.BytesIO:
        if mode not in ("r", "rb"):
            raise ValueError(f"{path}: in-memory synthetic files are read-only (mode {mode!r}); open them with 'rb'")
        data = _files.get(path)
        if data is None:
            raise FileNotFoundError(
                f"{path}: this in-memory synthetic file is gone. It exists only in the process that served the "
                f"item, until its item is mapped (at most {MAX_FILES} at a time): map a synthetic dataset dict "
                "right after reading it, in the same process, as detectron2's MapDataset does"
            )
        return io.BytesIO(data)

    def _exists(self, path: str, **kwargs: Any) -> bool:
        return path in _files

    def _isfile(self, path: str, **kwargs: Any) -> bool:
        return path in _files

    def _isdir(self, path: str, **kwargs: Any) -> bool:
        return False


def register_handler() -> None:
    """Register the handler on detectron2's PathManager once per process (repeating it is harmless)."""
    try:
        PathManager.register_handler(MemoryPathHandler(), allow_override=False)
    except KeyError:  # registered already: by this module (fine) or by someone else (not fine)
        current = PathManager._path_handlers.get(PREFIX)  # iopath has no public lookup
        if not isinstance(current, MemoryPathHandler):
            raise RuntimeError(f"the path prefix {PREFIX!r} is taken by {type(current).__name__}") from None


def encode(array: np.ndarray) -> bytes:
    """Uncompressed PPM (H, W, 3 uint8) or PGM (H, W uint8): PIL reads both back exactly."""
    if array.dtype != np.uint8 or array.ndim not in (2, 3):
        raise ValueError(f"in-memory files hold (H, W) or (H, W, 3) uint8 arrays, got {array.shape} {array.dtype}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PPM")
    return buf.getvalue()


def put(array: np.ndarray, name: str) -> str:
    """Keep `array` as an in-memory file and return its path (``synthaug-mem://<pid>/<n>/<name>.ppm|.pgm``)."""
    ext = "pgm" if array.ndim == 2 else "ppm"
    path = f"{PREFIX}{os.getpid()}/{next(_names)}/{name}.{ext}"
    _files[path] = encode(array)
    while len(_files) > MAX_FILES:
        _files.popitem(last=False)
    return path


def drop(paths: list[str]) -> None:
    """Forget in-memory files (once their item is mapped)."""
    for p in paths:
        _files.pop(p, None)


def paths_of(dataset_dict: dict) -> list[str]:
    """The in-memory files a dataset dict names."""
    return [
        v
        for k in ("file_name", "sem_seg_file_name")
        if isinstance(v := dataset_dict.get(k), str) and v.startswith(PREFIX)
    ]


register_handler()

"""Reading and writing images and masks: palette PNG masks (255 = ignore) and atomic file writes."""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from synthaug.vocabulary import IGNORE_INDEX

IGNORE_COLOUR = (255, 255, 255)


def palette_bytes(palette: Sequence[Sequence[int]]) -> list[int]:
    """A 256-entry PIL palette: class colours first, white for ignore (255), black elsewhere."""
    flat = [0] * (256 * 3)
    for i, rgb in enumerate(palette):
        flat[3 * i : 3 * i + 3] = [int(v) for v in rgb]
    flat[3 * IGNORE_INDEX : 3 * IGNORE_INDEX + 3] = list(IGNORE_COLOUR)
    return flat


def mask_to_png(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A 'P'-mode PIL image whose pixel values are the class ids of `mask` (H, W) uint8."""
    if mask.ndim != 2 or mask.dtype != np.uint8:
        raise ValueError(f"mask must be (H, W) uint8, got {mask.shape} {mask.dtype}")
    img = Image.fromarray(mask, mode="P")
    img.putpalette(palette_bytes(palette))
    return img


def read_mask(path: str | Path) -> np.ndarray:
    """Class ids of a mask PNG (palette or greyscale) as (H, W) uint8; never the palette colours."""
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(f"{path}: mask PNGs must be palette ('P') or greyscale ('L'), not {img.mode!r}")
        return np.array(img, dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    with Image.open(path) as img:
        return np.array(img.convert("RGB"), dtype=np.uint8)


def atomic_write_bytes(path: str | Path, data: bytes, fsync: bool = True) -> None:
    """Write to a temporary file in the same folder, fsync (unless told not to), then rename: readers never see
    a partial file.

    The file gets the permissions the process umask gives a new file (0644 under umask 022), as any
    other file the user writes would; never a private 0600 that other users of a shared store cannot read.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise

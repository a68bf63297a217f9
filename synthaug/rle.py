"""COCO run-length encoding of binary masks, in pure numpy (no pycocotools needed by the core).

The compressed string form is the one COCO JSON and pycocotools use: counts of alternating
0- and 1-runs over the mask in column-major order, starting with zeros, delta- and
base-32-encoded into printable characters.
"""

from __future__ import annotations

from typing import TypedDict

import numpy as np


class RLE(TypedDict):
    size: list[int]  # [height, width]
    counts: str


def _run_lengths(mask: np.ndarray) -> list[int]:
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    if flat.size == 0:
        return [0]
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat[0] else runs


def _encode_counts(counts: list[int]) -> str:
    out = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def _decode_counts(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def encode(mask: np.ndarray) -> RLE:
    """Compressed COCO RLE of a 2-D boolean mask."""
    if mask.ndim != 2:
        raise ValueError(f"encode() takes one (H, W) mask, got shape {mask.shape}")
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _encode_counts(_run_lengths(mask))}


def decode(rle: RLE) -> np.ndarray:
    """The (H, W) boolean mask of a compressed (string) or uncompressed (list) COCO RLE."""
    h, w = rle["size"]
    counts = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = _decode_counts(counts) if isinstance(counts, str) else list(counts)
    if sum(runs) != h * w:
        raise ValueError(f"RLE counts cover {sum(runs)} pixels, but size {h}x{w} has {h * w}: the RLE is corrupt")
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape((h, w), order="F")


def area(rle: RLE) -> int:
    """Number of foreground pixels."""
    counts = rle["counts"]
    runs = _decode_counts(counts) if isinstance(counts, str) else list(counts)
    return int(sum(runs[1::2]))


def bbox(mask: np.ndarray) -> list[float]:
    """COCO box [x, y, width, height] of a boolean mask; zeros if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]

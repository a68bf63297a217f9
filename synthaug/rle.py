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


def _decode_counts(s: str) -> np.ndarray:
    """The run lengths of a compressed counts string, vectorised (the per-character loop it replaces cost more
    than decoding the mask PNG). Raises ValueError for characters or numbers no encoder writes."""
    if not s:
        return np.zeros(0, dtype=np.int64)
    try:
        c = np.frombuffer(s.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    except UnicodeEncodeError:
        raise ValueError(f"RLE counts {s[:40]!r} hold non-ASCII characters") from None
    more = (c & 0x20) != 0
    if c.min() < 0 or c.max() > 63 or more[-1]:
        raise ValueError(f"RLE counts {s[:40]!r} hold characters outside '0'..'o' or end inside a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > 12:
        raise ValueError(f"RLE counts {s[:40]!r} hold a number of more than 12 characters")
    shift = 5 * (np.arange(c.size) - np.repeat(starts, lengths))
    vals = np.add.reduceat((c & 0x1F) << shift, starts)
    vals = np.where(c[ends] & 0x10, vals - (np.int64(1) << (5 * lengths)), vals)  # sign-extend negatives
    vals[1::2] = np.cumsum(vals[1::2])  # from the fourth count on, each is a delta to the one two before
    vals[2::2] = np.cumsum(vals[2::2])
    return vals


def encode(mask: np.ndarray) -> RLE:
    """Compressed COCO RLE of a 2-D boolean mask."""
    if mask.ndim != 2:
        raise ValueError(f"encode() takes one (H, W) mask, got shape {mask.shape}")
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _encode_counts(_run_lengths(mask))}


def decode(rle: RLE, build: bool = True) -> np.ndarray:
    """The (H, W) boolean mask of a compressed (string) or uncompressed (list) COCO RLE; ValueError if the runs
    do not cover the mask exactly. With build=False only the runs are checked (and returned)."""
    h, w = rle["size"]
    runs = _runs(rle["counts"])
    if (runs.size and runs.min() < 0) or int(runs.sum()) != h * w:
        raise ValueError(
            f"RLE counts cover {int(runs.sum())} pixels (runs from {int(runs.min(initial=0))}), but size {h}x{w} "
            f"has {h * w}: the RLE is corrupt"
        )
    if not build:
        return runs
    values = np.zeros(len(runs), dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape((h, w), order="F")


def _runs(counts: str | bytes | list[int]) -> np.ndarray:
    """Run lengths of a compressed (string) or uncompressed (list) COCO counts field."""
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        return _decode_counts(counts)
    return np.asarray(counts, dtype=np.int64).reshape(-1)


def check(rle: RLE, height: int, width: int) -> None:
    """Raise ValueError unless `rle` is an RLE of a height x width mask whose runs cover it exactly.

    Cheaper than decode(): it checks the counts without building the mask.
    """
    if list(rle.get("size", ())) != [height, width]:
        raise ValueError(f"RLE size {rle.get('size')!r:.40} is not the image's [{height}, {width}]")
    try:
        decode({"size": [height, width], "counts": rle["counts"]}, build=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"RLE does not decode: {err}") from None


def area(rle: RLE) -> int:
    """Number of foreground pixels."""
    return int(_runs(rle["counts"])[1::2].sum())


def bbox(mask: np.ndarray) -> list[float]:
    """COCO box [x, y, width, height] of a boolean mask; zeros if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return [0.0, 0.0, 0.0, 0.0]
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]

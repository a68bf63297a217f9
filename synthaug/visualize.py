"""Pictures of samples: mask overlays (class colours, ignore hatched) and contact sheets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from synthaug.vocabulary import IGNORE_INDEX


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    palette: Sequence[Sequence[int]],
    alpha: float = 0.5,
    background_id: int | None = 0,
) -> np.ndarray:
    """Blend class colours over `image` (H, W, 3); background is left clear, ignore (255) is hatched."""
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    out = image.astype(np.float32).copy()
    colours = np.array(list(palette) + [(0, 0, 0)] * (256 - len(palette)), dtype=np.float32)
    colours[IGNORE_INDEX] = (255, 255, 255)
    painted = mask != background_id if background_id is not None else np.ones_like(mask, bool)
    painted &= mask != IGNORE_INDEX
    out[painted] = (1 - alpha) * out[painted] + alpha * colours[mask[painted]]
    yy, xx = np.indices(mask.shape)
    hatch = (mask == IGNORE_INDEX) & (((yy + xx) // 2) % 2 == 0)
    out[hatch] = (255, 255, 255)
    return out.round().clip(0, 255).astype(np.uint8)


def colour_mask(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """The mask alone in class colours (background black), ignore (255) hatched white."""
    return overlay(np.zeros((*mask.shape, 3), np.uint8), mask, palette, alpha=1.0)


def contact_sheet(tiles: Sequence[np.ndarray], columns: int = 8, scale: int = 1, gap: int = 2) -> np.ndarray:
    """Tiles (all H, W, 3 uint8 of one size) in a grid, each enlarged `scale` times (nearest)."""
    if not tiles:
        raise ValueError("contact_sheet needs at least one tile")
    h, w = tiles[0].shape[:2]
    h, w = h * scale, w * scale
    rows = -(-len(tiles) // columns)
    sheet = np.full((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        big = np.array(Image.fromarray(tile).resize((w, h), Image.NEAREST)) if scale != 1 else tile
        r, c = divmod(i, columns)
        sheet[gap + r * (h + gap) : gap + r * (h + gap) + h, gap + c * (w + gap) : gap + c * (w + gap) + w] = big
    return sheet

"""Multi-scale deformable attention by its formula: the independent check of the pure-PyTorch paths that
mmseg's (mmcv) and detectron2's (maskformer2) Mask2Former run without compiled ops."""

from __future__ import annotations

import itertools

import torch


def reference_msda(value, shapes, locations, weights) -> torch.Tensor:
    """Multi-scale deformable attention by its formula, one sample at a time: for each query, head, level
    and point, the value map bilinearly interpolated at (x W - 0.5, y H - 0.5) (pixel centres; zero outside
    the map), weighted and summed. No grid_sample: an independent check of the pure-PyTorch paths."""
    bs, _, heads, dims = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = torch.zeros(bs, queries, heads, dims, dtype=torch.float64)
    starts = [0, *itertools.accumulate(h * w for h, w in shapes)]
    for b, q, h, lvl, p in itertools.product(range(bs), range(queries), range(heads), range(levels), range(points)):
        height, width = shapes[lvl]
        grid = value[b, starts[lvl] : starts[lvl + 1], h].double().view(height, width, dims)
        x = locations[b, q, h, lvl, p, 0].item() * width - 0.5
        y = locations[b, q, h, lvl, p, 1].item() * height - 0.5
        x0, y0 = int(torch.floor(torch.tensor(x))), int(torch.floor(torch.tensor(y)))
        sample = torch.zeros(dims, dtype=torch.float64)
        for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
            if 0 <= xi < width and 0 <= yi < height:
                sample += (1 - abs(x - xi)) * (1 - abs(y - yi)) * grid[yi, xi]
        out[b, q, h] += weights[b, q, h, lvl, p].item() * sample
    return out.view(bs, queries, heads * dims)

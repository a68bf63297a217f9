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


def assert_matches_reference(pytorch_msda) -> None:
    """`pytorch_msda(value, shapes, locations, weights)` equals the formula on random inputs, some of whose
    sampling locations fall off the maps (the zero padding is part of what is checked)."""
    torch.manual_seed(0)
    shapes = [(4, 5), (2, 3)]
    bs, queries, heads, dims, points = 2, 3, 2, 4, 3
    value = torch.randn(bs, sum(h * w for h, w in shapes), heads, dims)
    locations = torch.rand(bs, queries, heads, len(shapes), points, 2) * 1.4 - 0.2
    weights = torch.rand(bs, queries, heads, len(shapes), points)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    got = pytorch_msda(value, torch.tensor(shapes), locations, weights)
    assert torch.allclose(got.double(), reference_msda(value, shapes, locations, weights), atol=1e-5)

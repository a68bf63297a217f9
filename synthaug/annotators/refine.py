"""Edge-aware refinement of object maps: a torch-native guided-filter CRF, and DenseCRF (optional extra).

Both take (K, H, W) object maps in [0, 1] and the image, add a background channel
(``1 - max_k map_k``), run mean-field inference with a Potts model whose pairwise term is
edge-aware, and return refined (K, H, W) object probabilities.

The torch version passes its messages with a colour guided filter (He et al., "Guided Image
Filtering"): an edge-preserving average whose cost does not depend on the window size (box
filters). It iterates at a working resolution (attention maps carry no finer detail) and then
snaps the result to the full-resolution image with one more guided-filter pass, so it runs on
the CPU or the GPU with no extension. DenseCRF (``pydensecrf2``) is the fully connected
permutohedral version, as DiffuMask used it (10 iterations, sxy 80, srgb 13, compat 10).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

REFINERS = ("none", "edge", "crf")


@dataclass(frozen=True)
class EdgeRefineParams:
    """Guided-filter mean field: iterations, filter radius (share of the working side), eps, Potts weight, working size.

    work_size 64 matches the finest attention maps of SD at 512x512 (64x64 latents). A radius of 0.1 of
    the side (3 px at 32), eps 1e-3 and compat 8 were the best of a sweep on the toy model
    (benchmarks/annotators_toy.py); a relative radius behaves the same at every working size.
    """

    iterations: int = 5
    radius: float = 0.1
    eps: float = 1e-3
    compat: float = 8.0
    work_size: int = 64

    def __post_init__(self) -> None:
        if not 0 < self.radius <= 0.5 or self.iterations < 1 or self.work_size < 8:
            raise ValueError(
                f"need 0 < radius <= 0.5 (a share of the side, got {self.radius}), iterations >= 1, work_size >= 8"
            )
        if self.eps <= 0:
            raise ValueError(f"eps={self.eps} must be > 0 (it keeps the filter well-posed in flat regions)")


@dataclass(frozen=True)
class CRFParams:
    """DenseCRF parameters as DiffuMask used them."""

    iterations: int = 10
    bilateral_sxy: float = 80.0
    bilateral_srgb: float = 13.0
    bilateral_compat: float = 10.0
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 3.0


def with_background(maps: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """(K+1, H, W) probabilities: background = 1 - max of the object maps, then normalised per pixel."""
    maps = maps.clamp(0, 1)
    bg = 1.0 - (maps.max(0).values if maps.shape[0] else torch.zeros(maps.shape[-2:], device=maps.device))
    p = torch.cat([bg[None], maps]).clamp_min(eps)
    return p / p.sum(0, keepdim=True)


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window of each channel of (N, C, H, W), shrunk at the borders; separable."""
    k = 2 * radius + 1
    x = F.avg_pool2d(x, (1, k), stride=1, padding=(0, radius), count_include_pad=False)
    return F.avg_pool2d(x, (k, 1), stride=1, padding=(radius, 0), count_include_pad=False)


class GuidedFilter:
    """A colour guided filter for one guide image (1, 3, H, W) in [0, 1]; the guide's statistics are computed once."""

    def __init__(self, guide: torch.Tensor, radius: int, eps: float) -> None:
        self.guide, self.radius = guide, radius
        self.mean_i = box_mean(guide, radius)  # (1, 3, H, W)
        pairs = guide[:, :, None] * guide[:, None]  # (1, 3, 3, H, W)
        h, w = guide.shape[-2:]
        corr = box_mean(pairs.reshape(1, 9, h, w), radius).view(1, 3, 3, h, w)
        cov = corr - self.mean_i[:, :, None] * self.mean_i[:, None]
        cov = cov.permute(0, 3, 4, 1, 2) + eps * torch.eye(3, device=guide.device, dtype=guide.dtype)
        self.inv_cov = torch.linalg.inv(cov)  # (1, H, W, 3, 3)

    def coefficients(self, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box-averaged linear coefficients (a: (1, C, 3, H, W), b: (1, C, H, W)) of src (1, C, H, W)."""
        r = self.radius
        c, (h, w) = src.shape[1], src.shape[-2:]
        mean_p = box_mean(src, r)
        mean_ip = box_mean((self.guide[:, None] * src[:, :, None]).reshape(1, 3 * c, h, w), r).view(1, c, 3, h, w)
        cov_ip = mean_ip - self.mean_i[:, None] * mean_p[:, :, None]  # (1, C, 3, H, W)
        a = torch.einsum("nhwij,ncjhw->ncihw", self.inv_cov, cov_ip)
        b = mean_p - (a * self.mean_i[:, None]).sum(2)
        return box_mean(a.reshape(1, 3 * c, h, w), r).view(1, c, 3, h, w), box_mean(b, r)

    def __call__(self, src: torch.Tensor) -> torch.Tensor:
        a, b = self.coefficients(src)
        return (a * self.guide[:, None]).sum(2) + b


def _image_tensor(image: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    img = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    return img.to(device).float().permute(2, 0, 1)[None] / 255.0  # (1, 3, H, W) in [0, 1]


def edge_refine(
    maps: torch.Tensor, image: np.ndarray | torch.Tensor, params: EdgeRefineParams | None = None
) -> torch.Tensor:
    """Refined (K, H, W) object probabilities; runs on `maps.device`."""
    p = params or EdgeRefineParams()
    k, H, W = maps.shape
    if k == 0:
        return maps
    img = _image_tensor(image, maps.device)
    if img.shape[-2:] != (H, W):
        raise ValueError(f"image {tuple(img.shape[-2:])} and maps {(H, W)} differ in size")
    scale = min(1.0, p.work_size / max(H, W))
    h, w = max(1, round(H * scale)), max(1, round(W * scale))
    small = img if (h, w) == (H, W) else F.interpolate(img, size=(h, w), mode="area")
    unary = torch.log(with_background(maps.float()))[None]
    if (h, w) != (H, W):
        unary = F.interpolate(unary, size=(h, w), mode="area")
    gf = GuidedFilter(small, max(1, round(p.radius * max(h, w))), p.eps)
    q = unary.softmax(1)
    for _ in range(p.iterations):
        q = (unary + p.compat * gf(q)).softmax(1)
    if (h, w) != (H, W):  # guided upsampling: coefficients at working size, applied to the full image
        a, b = gf.coefficients(q)
        a = F.interpolate(a.view(1, -1, h, w), size=(H, W), mode="bilinear", align_corners=False)
        b = F.interpolate(b, size=(H, W), mode="bilinear", align_corners=False)
        q = (a.view(1, k + 1, 3, H, W) * img[:, None]).sum(2) + b
        q = q.clamp_min(0)
        q = q / q.sum(1, keepdim=True).clamp_min(1e-6)
    return q[0, 1:].clamp(0, 1)


def crf_refine(maps: torch.Tensor, image: np.ndarray, params: CRFParams | None = None) -> torch.Tensor:
    """Refined (K, H, W) object probabilities from DenseCRF (needs `pip install 'synthaug[crf]'`)."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as err:
        raise ImportError(
            "refine='crf' needs pydensecrf2: pip install 'synthaug[crf]' (or use refine='edge', "
            "the built-in torch refinement)"
        ) from err
    p = params or CRFParams()
    k, H, W = maps.shape
    if k == 0:
        return maps
    probs = with_background(maps.detach().float().cpu()).numpy().reshape(k + 1, H * W)
    crf = dcrf.DenseCRF2D(W, H, k + 1)
    crf.setUnaryEnergy(np.ascontiguousarray(-np.log(probs), dtype=np.float32))
    crf.addPairwiseGaussian(sxy=p.gaussian_sxy, compat=p.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=p.bilateral_sxy,
        srgb=p.bilateral_srgb,
        rgbim=np.ascontiguousarray(image, dtype=np.uint8),
        compat=p.bilateral_compat,
    )
    q = np.array(crf.inference(p.iterations), dtype=np.float32).reshape(k + 1, H, W)
    return torch.from_numpy(q[1:]).to(maps.device)


def refine(maps: torch.Tensor, image: np.ndarray, method: str = "none", **params) -> torch.Tensor:
    """Dispatch by name: 'none' (maps unchanged), 'edge' (torch, CPU/GPU) or 'crf' (DenseCRF)."""
    if method == "none":
        return maps
    if method == "edge":
        return edge_refine(maps, image, EdgeRefineParams(**params))
    if method == "crf":
        return crf_refine(maps, image, CRFParams(**params))
    raise ValueError(f"refine={method!r}: use one of {REFINERS}")

"""Pixel anomaly maps and image scores from an input and its reconstruction (pure functions)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.filters import get_gaussian_kernel1d
from torch import Tensor

REDUCTIONS = ("max", "topk_mean", "mean")
NORMALIZATIONS = ("none", "pixel")
# A pixel whose clean residual barely varies (a background the autoencoder copies exactly) would get a
# near-zero std and turn any tiny deviation into a huge z-score that dominates the max; 1 % of the mean std
# bounds that gain at 100x the typical pixel's.
MIN_STD_FRACTION = 0.01


def smoothing_radius(sigma: float, size: int) -> int:
    """Kernel radius: +-4 sigma (as scipy.ndimage), capped by the map size so reflect padding stays valid."""
    return min(math.ceil(4 * sigma), (size - 1) // 2) if sigma > 0 else 0


def gaussian_kernel(sigma: float, radius: int) -> Tensor:
    """(2 * radius + 1,) normalised Gaussian weights (kornia's kernel)."""
    return get_gaussian_kernel1d(2 * radius + 1, sigma)[0].float()


def smooth(maps: Tensor, sigma: float, kernel: Tensor | None = None) -> Tensor:
    """Gaussian smoothing of (N, H, W) maps, sigma in pixels (0 disables it), reflect padding at the borders.

    A separable pair of fixed convolutions, so that export traces it as two convs; `kernel` (a precomputed
    `gaussian_kernel` of the right radius) saves recomputing the weights on every call.
    """
    radius = smoothing_radius(sigma, min(maps.shape[-2:]))
    if radius == 0:
        return maps
    if kernel is None or len(kernel) != 2 * radius + 1:
        kernel = gaussian_kernel(sigma, radius).to(maps.device)
    weights = kernel.to(maps.dtype).reshape(1, 1, 1, -1)  # (1, 1, 1, K)
    out = F.pad(maps[:, None], (radius, radius, 0, 0), mode="reflect")  # (N, 1, H, W + 2r)
    out = F.conv2d(out, weights)  # along W
    out = F.conv2d(F.pad(out, (0, 0, radius, radius), mode="reflect"), weights.mT)  # along H
    return out[:, 0]


def residual_map(images: Tensor, reconstructions: Tensor) -> Tensor:
    """Squared residual averaged over channels: (N, C, H, W) x2 -> (N, H, W)."""
    return (images.float() - reconstructions.float()).pow(2).mean(dim=1)


def anomaly_map(images: Tensor, reconstructions: Tensor, sigma: float = 4.0) -> Tensor:
    """Squared residual averaged over channels, then smoothed: (N, C, H, W) x2 -> (N, H, W)."""
    return smooth(residual_map(images, reconstructions), sigma)


def residual_sums(residual: Tensor) -> Tensor:
    """(N, H, W) residual maps -> (3, H, W) float64 count, sum and sum of squares per pixel position.

    Summed over batches (and DDP ranks), they give `residual_statistics`; float64 because the variance is
    a difference of two sums.
    """
    residual = residual.double()
    return torch.stack([torch.ones_like(residual).sum(0), residual.sum(0), residual.pow(2).sum(0)])


def residual_statistics(total: Tensor, total_sq: Tensor, count: float) -> tuple[Tensor, Tensor]:
    """Per-pixel mean and std (clamped from below) from sums and sums of squares of `count` maps.

    (H, W) sums, best in float64 (the variance is a difference of two sums) -> (H, W) float32 mean, std.
    """
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt()
    floor = (MIN_STD_FRACTION * std.mean()).clamp_min(1e-12)  # 1e-12: an all-constant map must not give 0
    return mean.float(), std.clamp_min(floor).float()


def image_score(maps: Tensor, reduction: str = "max", topk: int = 100) -> Tensor:
    """Reduce (N, H, W) anomaly maps to (N,) image scores."""
    flat = maps.flatten(1)
    if reduction == "max":
        return flat.amax(dim=1)
    if reduction == "mean":
        return flat.mean(dim=1)
    if reduction == "topk_mean":
        return flat.topk(min(topk, flat.shape[1]), dim=1).values.mean(dim=1)
    raise ValueError(f"score.reduction={reduction!r} is not one of {REDUCTIONS}")

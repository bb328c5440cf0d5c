"""Pixel anomaly maps and image scores from an input and its reconstruction."""

from __future__ import annotations

import math

import torch
from kornia.filters import gaussian_blur2d
from torch import Tensor

REDUCTIONS = ("max", "topk_mean", "mean")


def smooth(maps: Tensor, sigma: float) -> Tensor:
    """Gaussian smoothing of (N, H, W) maps; sigma in pixels, 0 disables it."""
    if sigma <= 0:
        return maps
    # Kernel covers +-4 sigma (as scipy.ndimage does), capped by the map size to keep reflect padding valid.
    radius = min(math.ceil(4 * sigma), (min(maps.shape[-2:]) - 1) // 2)
    size = 2 * radius + 1
    return gaussian_blur2d(maps[:, None], (size, size), (sigma, sigma), border_type="reflect")[:, 0]


def anomaly_map(images: Tensor, reconstructions: Tensor, sigma: float = 4.0) -> Tensor:
    """Squared residual averaged over channels, then smoothed: (N, C, H, W) x2 -> (N, H, W)."""
    residual = (images.float() - reconstructions.float()).pow(2).mean(dim=1)
    return smooth(residual, sigma)


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


def reconstruction_loss(
    reconstructions: Tensor, targets: Tensor, mask: Tensor, clean_weight: float | None = None
) -> Tensor:
    """Pixel-wise squared error over the whole image (clean_weight=None, the paper's default).

    With clean_weight=lambda in [0, 1]: lambda * MSE(clean) + (1 - lambda) * MSE(corrupted),
    each normalised by its own pixel count.
    """
    error = (reconstructions.float() - targets.float()).pow(2).mean(dim=1)  # (N, H, W)
    if clean_weight is None:
        return error.mean()
    corrupted = mask.float().squeeze(1)
    clean = 1 - corrupted
    # clamp: a batch without any corrupted pixel must not divide by zero.
    mse_clean = (error * clean).sum() / clean.sum().clamp_min(1)
    mse_corrupted = (error * corrupted).sum() / corrupted.sum().clamp_min(1)
    return clean_weight * mse_clean + (1 - clean_weight) * mse_corrupted


def as_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] or float images -> float32 in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()

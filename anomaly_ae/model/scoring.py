"""Pixel anomaly maps and image scores from an input and its reconstruction (pure functions)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from kornia.filters import get_gaussian_kernel1d, sobel
from kornia.metrics import ssim
from torch import Tensor

REDUCTIONS = ("max", "topk_mean", "mean")
NORMALIZATIONS = ("none", "pixel")
RESIDUALS = (
    "squared",
    "multiscale",
    "gradient",
    "squared_and_gradient",
    "ssim",
    "squared_and_ssim",
    "squared_gradient_and_ssim",
    "learned",
    "squared_gradient_and_learned",
)
# The component scored by a trained DefectSegmenter (model/segmenter.py) rather than by a formula: the
# scorer computes it, `residual_map` never does.
LEARNED = "learned"
# Residuals made of several maps, each z-scored with its own clean statistics before they are averaged: the
# gradient distance of a trained model's clean residual is ~17x the squared residual's in std, ~37x in mean
# (brick, 600 steps), so an unscaled sum would be the gradient map alone.
COMPONENTS = {
    "squared_and_gradient": ("squared", "gradient"),
    "squared_and_ssim": ("squared", "ssim"),
    "squared_gradient_and_ssim": ("squared", "gradient", "ssim"),
    "squared_gradient_and_learned": ("squared", "gradient", LEARNED),
}


def uses_segmenter(kind: str) -> bool:
    """Whether the residual `kind` is or contains the learned component."""
    return LEARNED in COMPONENTS.get(kind, (kind,))


# Pyramid levels of the multi-scale residuals: full size and 1/2, 1/4, 1/8 (RIAD, Zavrtanik et al. 2021).
SCALES = (1, 2, 4, 8)
# The stabilising constant of gradient-magnitude similarity. RIAD's 0.0026 is for Prewitt/3 kernels, whose
# response to a ramp is twice kornia's normalised Sobel; similarity compares squared magnitudes, hence / 4.
GMS_CONSTANT = 0.0026 / 4
# A pixel whose clean residual barely varies (a background the autoencoder copies exactly) would get a
# near-zero std and turn any tiny deviation into a huge z-score that dominates the max; 1 % of the mean std
# bounds that gain at 100x the typical pixel's.
MIN_STD_FRACTION = 0.01
# SSIM's Gaussian window: 11 x 11 taps of sigma 1.5 px, the setting of Wang et al. 2004 (and of scikit-image's
# gaussian_weights=True); kornia's ssim fixes sigma at 1.5 and takes the tap count.
SSIM_WINDOW = 11


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


def residual_map(images: Tensor, reconstructions: Tensor, kind: str = "squared") -> Tensor:
    """Per-pixel residual of a reconstruction: (N, C, H, W) x2 -> (N, H, W); `kind` one of RESIDUALS.

    A kind of COMPONENTS gives (N, K, H, W), one map per component, for `AnomalyScorer.normalized` to
    z-score and average.

    squared: the squared difference, averaged over channels. multiscale: the mean over SCALES of the
    squared difference of the 2x2-average-pooled images, upsampled back: three of its four terms compare
    local means, so fine texture detail that the autoencoder cannot reproduce weighs less than a change of
    tone or a missing region. gradient: 1 - multi-scale gradient-magnitude similarity of the grey images,
    high where an edge appears, vanishes or changes strength (a blur, a scratch), insensitive to a uniform
    shift of brightness. ssim: 1 - the structural similarity (Wang et al. 2004) of each channel in an 11 x 11
    Gaussian window, averaged over channels: compares local mean, contrast and correlation, so a patch whose
    texture is flattened, re-oriented or has its contrast changed scores even where its mean tone is kept.
    """
    if uses_segmenter(kind):
        raise ValueError(f"score.residual={kind} needs the trained segmenter: score it with AnomalyScorer")
    images, reconstructions = images.float(), reconstructions.float()
    if kind in COMPONENTS:
        return torch.stack([residual_map(images, reconstructions, part) for part in COMPONENTS[kind]], dim=1)
    if kind == "squared":
        return (images - reconstructions).pow(2).mean(dim=1)
    if kind == "multiscale":
        return _pyramid_mean(images, reconstructions, lambda a, b: (a - b).pow(2).mean(dim=1, keepdim=True))
    if kind == "gradient":
        return _pyramid_mean(
            images.mean(1, keepdim=True), reconstructions.mean(1, keepdim=True), _gms_distance
        )
    if kind == "ssim":
        return _ssim_distance(images, reconstructions)
    raise ValueError(f"score.residual={kind!r} is not one of {RESIDUALS}")


def _ssim_distance(images: Tensor, reconstructions: Tensor) -> Tensor:
    """1 - SSIM map of two (N, C, H, W) images in [0, 1], averaged over channels: -> (N, H, W).

    The window shrinks on images smaller than 11 px, whose reflect padding must stay inside the image.
    """
    window = min(SSIM_WINDOW, 2 * (min(images.shape[-2:]) - 1) - 1)
    return 1 - ssim(images, reconstructions, window, max_val=1.0).mean(dim=1)


def _gms_distance(a: Tensor, b: Tensor) -> Tensor:
    """1 - gradient-magnitude similarity of two (N, 1, h, w) grey images, in [0, 1]."""
    ga, gb = sobel(a), sobel(b)  # sobel's eps keeps the backward pass of explanations finite
    return 1 - (2 * ga * gb + GMS_CONSTANT) / (ga.pow(2) + gb.pow(2) + GMS_CONSTANT)


def _pyramid_mean(images: Tensor, reconstructions: Tensor, distance) -> Tensor:
    """Mean over SCALES of `distance` of the average-pooled pair, each map upsampled back: -> (N, H, W).

    Written with avg_pool2d and interpolate rather than a pyramid helper so that ONNX export traces it as
    plain ops; levels below 4x4 pixels are skipped (a tiny test image keeps its coarse levels valid).
    """
    size, maps = images.shape[-2:], []
    for scale in SCALES:
        if scale > 1 and min(size) // scale < 4:
            break
        a = F.avg_pool2d(images, scale) if scale > 1 else images
        b = F.avg_pool2d(reconstructions, scale) if scale > 1 else reconstructions
        level = distance(a, b)
        if scale > 1:
            level = F.interpolate(level, size=size, mode="bilinear", align_corners=False)
        maps.append(level)
    return torch.stack(maps).mean(dim=0)[:, 0]


def anomaly_map(images: Tensor, reconstructions: Tensor, sigma: float = 4.0) -> Tensor:
    """Squared residual averaged over channels, then smoothed: (N, C, H, W) x2 -> (N, H, W)."""
    return smooth(residual_map(images, reconstructions), sigma)


def residual_sums(residual: Tensor) -> Tensor:
    """(N, [K,] H, W) residual maps -> (3, [K,] H, W) float64 count, sum and sum of squares per position.

    Summed over batches (and DDP ranks), they give `residual_statistics`; float64 because the variance is
    a difference of two sums.
    """
    residual = residual.double()
    return torch.stack([torch.ones_like(residual).sum(0), residual.sum(0), residual.pow(2).sum(0)])


def residual_statistics(total: Tensor, total_sq: Tensor, count: float) -> tuple[Tensor, Tensor]:
    """Per-pixel mean and std (clamped from below) from sums and sums of squares of `count` maps.

    ([K,] H, W) sums, best in float64 (the variance is a difference of two sums) -> float32 mean, std of
    the same shape; the floor is per component, whose scales differ.
    """
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(0).sqrt()
    floor = MIN_STD_FRACTION * std.mean(dim=(-2, -1), keepdim=True)
    floor = floor.clamp_min(1e-12)  # an all-constant map must not give 0
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

"""The training objective: squared reconstruction error against the clean image."""

from __future__ import annotations

from torch import Tensor


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

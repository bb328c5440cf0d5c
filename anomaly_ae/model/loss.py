"""The training objective: squared reconstruction error against the clean image, optionally + edges."""

from __future__ import annotations

from torch import Tensor

from anomaly_ae.model.scoring import residual_map


def reconstruction_loss(
    reconstructions: Tensor,
    targets: Tensor,
    mask: Tensor,
    clean_weight: float | None = None,
    gradient_weight: float = 0.0,
) -> Tensor:
    """Pixel-wise squared error over the whole image (clean_weight=None, the paper's default).

    With clean_weight=lambda in [0, 1]: lambda * MSE(clean) + (1 - lambda) * MSE(corrupted),
    each normalised by its own pixel count. gradient_weight=w adds w times the mean multi-scale
    gradient-magnitude distance (the `gradient` residual of scoring, as RIAD's MSGMS loss): squared error
    alone lets fine texture be reproduced as a blur, which then scores high on every clean image.
    """
    error = (reconstructions.float() - targets.float()).pow(2).mean(dim=1)  # (N, H, W)
    if clean_weight is None:
        loss = error.mean()
    else:
        corrupted = mask.float().squeeze(1)
        clean = 1 - corrupted
        # clamp: a batch without any corrupted pixel must not divide by zero.
        mse_clean = (error * clean).sum() / clean.sum().clamp_min(1)
        mse_corrupted = (error * corrupted).sum() / corrupted.sum().clamp_min(1)
        loss = clean_weight * mse_clean + (1 - clean_weight) * mse_corrupted
    if gradient_weight:
        loss = loss + gradient_weight * residual_map(targets, reconstructions, "gradient").mean()
    return loss

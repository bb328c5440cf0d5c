"""I.i.d. Gaussian pixel noise: the classic denoising-autoencoder baseline the structured corruption beats.

Same interface as `StructuredCorruption` (images -> (corrupted, mask), an optional `torch.Generator`,
tensors on the batch's device), so `corruption=gaussian` swaps it in without code changes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GaussianNoiseCorruption(nn.Module):
    """images (B, C, H, W) -> (images + N(0, std^2) per pixel and channel, mask (B, 1, H, W)).

    The mask is 1 on every pixel of a noised image and 0 on the images left clean, so
    `loss.clean_weight` weighs the clean images against the noised ones.

    Args:
        std: noise standard deviation, in units of the [0, 1] intensity range.
        p_corrupt: probability that an image is noised; the others stay clean.
        clip: clamp the noised images to [0, 1] (changes the noise statistics near black and white).
    """

    def __init__(self, std: float = 0.2, p_corrupt: float = 1.0, clip: bool = False) -> None:
        super().__init__()
        if std <= 0:
            raise ValueError(f"corruption.std={std} must be > 0 (corruption=none trains without noise)")
        if not 0 <= p_corrupt <= 1:
            raise ValueError(f"corruption.p_corrupt={p_corrupt} must be in [0, 1]")
        self.std, self.p_corrupt, self.clip = std, p_corrupt, clip

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        b = images.shape[0]
        noised = torch.rand(b, 1, 1, 1, device=images.device, generator=generator) < self.p_corrupt
        noise = torch.randn(images.shape, device=images.device, dtype=images.dtype, generator=generator)
        corrupted = images + self.std * noise * noised
        if self.clip:
            corrupted = corrupted.clamp(0, 1)
        mask = noised.to(images.dtype).expand(b, 1, *images.shape[-2:])
        return corrupted, mask.contiguous()

    def anchor_noise(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """No identity-anchored noise: the input noise is the whole corruption (interface of the module)."""
        return images

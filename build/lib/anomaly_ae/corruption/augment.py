"""Label-preserving augmentation of normal training images, batched on the device."""

from __future__ import annotations

import torch
from torch import Tensor


def augment(
    images: Tensor, hflip: bool, vflip: bool, rot90: bool, generator: torch.Generator | None = None
) -> Tensor:
    """Random flips / right-angle rotations per image, batched on the images' device."""
    n, device, gen = len(images), images.device, generator
    if hflip:
        images = torch.where(
            torch.rand(n, 1, 1, 1, device=device, generator=gen) < 0.5, images.flip(-1), images
        )
    if vflip:
        images = torch.where(
            torch.rand(n, 1, 1, 1, device=device, generator=gen) < 0.5, images.flip(-2), images
        )
    if rot90 and images.shape[-1] == images.shape[-2]:
        turns = torch.randint(4, (n,), device=device, generator=gen)
        images = images.clone()
        for k in (1, 2, 3):
            images[turns == k] = images[turns == k].rot90(k, dims=(-2, -1))
    return images

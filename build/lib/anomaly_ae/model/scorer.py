"""AnomalyScorer: the one path from images to anomaly maps and image scores.

Training (validation and test), export, explanations and `Detector` all score through this module, so a
score option added here reaches every one of them with the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from anomaly_ae.model.scoring import gaussian_kernel, image_score, residual_map, smooth, smoothing_radius

DEFAULT_SCORE = {"sigma": 4.0, "reduction": "max", "topk": 100}


class AnomalyScorer(nn.Module):
    """Autoencoder -> squared residual (channel mean) -> Gaussian smoothing -> image score.

    Args:
        autoencoder: maps (N, C, H, W) images in [0, 1] to reconstructions of the same shape.
        sigma: smoothing in pixels at the model input size; 0 disables it.
        reduction: image score from the smoothed map: max, topk_mean or mean.
        image_size: the input size, when known: the smoothing kernel is then precomputed once.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        sigma: float = 4.0,
        reduction: str = "max",
        topk: int = 100,
        image_size: int | None = None,
    ) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.sigma, self.reduction, self.topk = float(sigma), reduction, int(topk)
        image_score(torch.zeros(1, 1, 1), reduction, topk)  # unknown reductions fail here, not after training
        kernel = gaussian_kernel(self.sigma, smoothing_radius(self.sigma, image_size)) if image_size else None
        # Not persistent: derived from sigma, so checkpoints keep only the autoencoder's weights.
        self.register_buffer("kernel", kernel, persistent=False)

    @classmethod
    def from_config(
        cls, autoencoder: nn.Module, score: Mapping, image_size: int | None = None
    ) -> AnomalyScorer:
        """From a `score:` config (sigma, reduction, topk); missing keys take the defaults."""
        options = {**DEFAULT_SCORE, **dict(score)}
        return cls(autoencoder, options["sigma"], options["reduction"], options["topk"], image_size)

    def anomaly_map(self, images: Tensor, reconstructions: Tensor) -> Tensor:
        """(N, C, H, W) images and reconstructions -> (N, H, W) smoothed anomaly maps."""
        return smooth(residual_map(images, reconstructions), self.sigma, self.kernel)

    def image_score(self, maps: Tensor) -> Tensor:
        """(N, H, W) anomaly maps -> (N,) image scores."""
        return image_score(maps, self.reduction, self.topk)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) images in [0, 1] -> (anomaly maps (N, H, W), image scores (N,)); one forward pass."""
        maps = self.anomaly_map(images, self.autoencoder(images))
        return maps, self.image_score(maps)

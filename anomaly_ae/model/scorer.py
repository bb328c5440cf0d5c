"""AnomalyScorer: the one path from images to anomaly maps and image scores.

Training (validation and test), export, explanations and `Detector` all score through this module, so a
score option added here reaches every one of them with the same numbers.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from anomaly_ae.model.scoring import (
    COMPONENTS,
    LEARNED,
    NORMALIZATIONS,
    RESIDUALS,
    gaussian_kernel,
    image_score,
    residual_map,
    residual_statistics,
    smooth,
    smoothing_radius,
    uses_segmenter,
)
from anomaly_ae.model.segmenter import DefectSegmenter

# What a checkpoint that predates an option scored with: its `score:` is completed with these values.
DEFAULT_SCORE = {
    "sigma": 4.0,
    "reduction": "max",
    "topk": 100,
    "normalize": "none",
    "flip_average": False,
    "residual": "squared",
    "segmenter_width": 8,
    "segmenter_depth": 3,
}


class AnomalyScorer(nn.Module):
    """Autoencoder -> residual (one of RESIDUALS) -> [per-pixel z-score] -> smoothing -> score.

    Args:
        autoencoder: maps (N, C, H, W) images in [0, 1] to reconstructions of the same shape.
        sigma: smoothing in pixels at the model input size; 0 disables it.
        reduction: image score from the smoothed map: max, topk_mean or mean.
        image_size: the input size, when known: the smoothing kernel is then precomputed once.
        normalize: none, or pixel: the residual becomes (r - mean) / std with per-pixel statistics of clean
            validation images (`fit_normalization`); needs image_size.
        flip_average: the residual is the mean of that of the image and the re-flipped residual of the
            horizontally flipped image (test-time augmentation, a second autoencoder pass).
        residual: the per-pixel residual, one of RESIDUALS (`scoring.residual_map`); one made of several
            maps (`scoring.COMPONENTS`) needs normalize=pixel, which z-scores each before averaging them.
            A residual with the `learned` component owns a DefectSegmenter (`segmenter`), trained with the
            autoencoder on the corruption masks (training/module.py); it needs normalize=pixel.
        segmenter_width, segmenter_depth: the DefectSegmenter's size, used only by a learned residual.
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        sigma: float = 4.0,
        reduction: str = "max",
        topk: int = 100,
        image_size: int | None = None,
        normalize: str = "none",
        flip_average: bool = False,
        residual: str = "squared",
        segmenter_width: int = 8,
        segmenter_depth: int = 3,
    ) -> None:
        super().__init__()
        if residual not in RESIDUALS:
            raise ValueError(f"score.residual={residual!r} is not one of {RESIDUALS}")
        self.residual_kind = residual
        self.autoencoder = autoencoder
        self.sigma, self.reduction, self.topk = float(sigma), reduction, int(topk)
        self.normalize, self.flip_average = normalize, bool(flip_average)
        image_score(torch.zeros(1, 1, 1), reduction, topk)  # unknown reductions fail here, not after training
        kernel = gaussian_kernel(self.sigma, smoothing_radius(self.sigma, image_size)) if image_size else None
        # Not persistent: derived from sigma, so checkpoints keep only the autoencoder's weights.
        self.register_buffer("kernel", kernel, persistent=False)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"score.normalize={normalize!r} is not one of {NORMALIZATIONS}")
        if residual in COMPONENTS and normalize != "pixel":
            raise ValueError(
                f"score.residual={residual} averages z-scored maps and needs score.normalize=pixel; "
                f"got score.normalize={normalize}"
            )
        self.parts = COMPONENTS.get(residual, (residual,))
        # Registered only for a learned residual, so other checkpoints keep their keys and load strictly.
        self.segmenter = None
        if uses_segmenter(residual):
            if normalize != "pixel":
                raise ValueError(
                    f"score.residual={residual} z-scores the segmenter's logits on clean images and needs "
                    f"score.normalize=pixel; got score.normalize={normalize}"
                )
            self.segmenter = DefectSegmenter(autoencoder.in_channels, segmenter_width, segmenter_depth)
        if normalize == "pixel":
            if not image_size:
                raise ValueError("score.normalize=pixel needs the model input size (image_size)")
            # Persistent, and registered only here: checkpoints carry the fitted statistics, while those
            # written with normalize=none keep their keys and load strictly. Mean 0, std 1 until fitted;
            # one (H, W) pair per component of a residual made of several maps.
            shape = (len(COMPONENTS[residual]),) if residual in COMPONENTS else ()
            self.register_buffer("residual_mean", torch.zeros(*shape, image_size, image_size))
            self.register_buffer("residual_std", torch.ones(*shape, image_size, image_size))

    @classmethod
    def from_config(
        cls, autoencoder: nn.Module, score: Mapping, image_size: int | None = None
    ) -> AnomalyScorer:
        """From a `score:` config (the keys of DEFAULT_SCORE); missing keys take DEFAULT_SCORE's value."""
        o = {**DEFAULT_SCORE, **dict(score)}
        return cls(
            autoencoder,
            o["sigma"],
            o["reduction"],
            o["topk"],
            image_size,
            o["normalize"],
            o["flip_average"],
            o["residual"],
            o["segmenter_width"],
            o["segmenter_depth"],
        )

    def residual(self, images: Tensor, reconstructions: Tensor | None = None) -> Tensor:
        """(N, C, H, W) images -> (N, H, W) residual before normalisation and smoothing; (N, K, H, W) for a
        residual of K components.

        `reconstructions` of `images`, when the caller has them, save one autoencoder pass.
        """
        if reconstructions is None:
            reconstructions = self.autoencoder(images)
        residual = self._residual_of(images, reconstructions)
        if self.flip_average:  # flipped back, so both terms describe the same pixel of `images`
            flipped = images.flip(-1)
            mirrored = self._residual_of(flipped, self.autoencoder(flipped)).flip(-1)
            residual = 0.5 * (residual + mirrored)
        return residual

    def _residual_of(self, images: Tensor, reconstructions: Tensor) -> Tensor:
        if self.segmenter is None:
            return residual_map(images, reconstructions, self.residual_kind)
        maps = [
            self.segmenter(images, reconstructions).float()
            if part == LEARNED
            else residual_map(images, reconstructions, part)
            for part in self.parts
        ]
        return torch.stack(maps, dim=1) if len(maps) > 1 else maps[0]

    def normalized(self, residual: Tensor) -> Tensor:
        """(N, [K,] H, W) residual -> (N, H, W) z-scores against clean validation images when
        normalize=pixel, averaged over the K components."""
        if self.normalize == "none":
            return residual
        if residual.shape[-2:] != self.residual_mean.shape[-2:]:
            raise ValueError(
                f"score.normalize=pixel holds statistics at {tuple(self.residual_mean.shape[-2:])}; "
                f"got maps of {tuple(residual.shape[-2:])}: score images at the model input size"
            )
        z = (residual - self.residual_mean) / self.residual_std
        return z.mean(dim=1) if z.dim() == 4 else z

    @torch.no_grad()
    def fit_normalization(self, total: Tensor, total_sq: Tensor, count: float) -> None:
        """Per-pixel statistics from ([K,] H, W) sums and sums of squares of `count` clean residuals."""
        self.fit_statistics(*residual_statistics(total, total_sq, count))

    @torch.no_grad()
    def fit_statistics(self, mean: Tensor, std: Tensor) -> None:
        """Set the per-pixel mean and (already floored) std of the clean residual directly."""
        self.residual_mean.copy_(mean)
        self.residual_std.copy_(std)

    def anomaly_map(self, images: Tensor, reconstructions: Tensor | None = None) -> Tensor:
        """(N, C, H, W) images [and their reconstructions] -> (N, H, W) smoothed anomaly maps.

        Normalising then smoothing the flip-averaged residual equals averaging the two normalised,
        smoothed maps: both steps are linear per pixel and the symmetric kernel commutes with the flip.
        """
        return self.residual_to_map(self.residual(images, reconstructions))

    def residual_to_map(self, residual: Tensor) -> Tensor:
        """(N, H, W) residual from `residual` -> (N, H, W) anomaly maps: normalised, then smoothed."""
        return smooth(self.normalized(residual), self.sigma, self.kernel)

    def image_score(self, maps: Tensor) -> Tensor:
        """(N, H, W) anomaly maps -> (N,) image scores."""
        return image_score(maps, self.reduction, self.topk)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) images in [0, 1] -> (anomaly maps (N, H, W), image scores (N,)).

        One autoencoder pass, two with flip_average.
        """
        maps = self.anomaly_map(images)
        return maps, self.image_score(maps)

"""DefectSegmenter: a small U-Net that reads an image and its reconstruction and marks where they disagree.

The reconstruction residual alone treats every difference alike: fine grain the autoencoder cannot
reproduce scores as high as a defect. A segmenter trained on the corruption masks learns which differences
matter (the discriminative half of DRAEM, Zavrtanik et al. 2021). Its logit map is one more residual
component (`score.residual=squared_gradient_and_learned`), z-scored on clean validation images like the
others, so the reconstruction error stays in the score.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class DefectSegmenter(nn.Module):
    """(image, reconstruction) -> (N, H, W) defect logits; any input side of at least 2**depth px.

    Args:
        in_channels: channels of the image (the input holds the image and its reconstruction).
        width: channels at full resolution, doubled at each of the `depth` max-pool downsamplings.
        depth: downsamplings; 3 sees 8x coarser context at its deepest stage.
    """

    def __init__(self, in_channels: int = 3, width: int = 8, depth: int = 3) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.encoder = nn.ModuleList(
            _double_conv(2 * in_channels if i == 0 else widths[i - 1], widths[i]) for i in range(depth + 1)
        )
        self.decoder = nn.ModuleList(
            _double_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))
        )
        self.head = nn.Conv2d(widths[0], 1, 1)
        # Channels-last: its full-resolution convolutions have few channels, and in that layout a training
        # step took 0.22 s instead of 0.34 s on 2 CPU cores (batch 16, 128 px; experiments/README.md,
        # "Throughput of the recipes"). Loading a state dict copies into these tensors and keeps the layout.
        self.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor, reconstructions: Tensor) -> Tensor:
        x = torch.cat([images, reconstructions.to(images.dtype)], dim=1)
        x = x.contiguous(memory_format=torch.channels_last)
        features = []
        for i, stage in enumerate(self.encoder):
            x = stage(x if i == 0 else F.max_pool2d(x, 2))
            features.append(x)
        for stage, skip in zip(self.decoder, reversed(features[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        return self.head(x)[:, 0].contiguous()


def segmentation_loss(logits: Tensor, masks: Tensor) -> Tensor:
    """Mean focal loss (Lin et al. 2017, gamma 2, no class weight) of (N, H, W) logits against {0, 1} masks.

    Defects cover a few per cent of the pixels; the focal term keeps the many easy clean pixels from
    dominating the loss, as in DRAEM's segmentation objective.
    """
    return sigmoid_focal_loss(logits, masks.to(logits.dtype), alpha=-1, gamma=2.0, reduction="mean")

"""DefectSegmenter and its focal loss: shapes, the loss against its formula, and that it learns."""

from __future__ import annotations

import pytest
import torch

from anomaly_ae.evaluation.metrics import PixelMetrics
from anomaly_ae.model.segmenter import DefectSegmenter, segmentation_loss


@pytest.mark.parametrize("size", [(32, 32), (24, 40), (30, 18)])
def test_segmenter_maps_an_image_pair_to_one_logit_per_pixel(size):
    segmenter = DefectSegmenter(in_channels=3, width=4, depth=2)
    images = torch.rand(2, 3, *size)
    assert segmenter(images, images.flip(-1)).shape == (2, *size)


def test_segmentation_loss_is_the_mean_focal_loss_of_the_formula():
    logits = torch.tensor([[[2.0, -1.0], [0.5, -3.0]]])
    masks = torch.tensor([[[1, 0], [0, 1]]])
    p = torch.sigmoid(logits)
    expected = torch.where(masks.bool(), -(1 - p).pow(2) * p.log(), -p.pow(2) * (1 - p).log()).mean()
    assert segmentation_loss(logits, masks).item() == pytest.approx(expected.item(), rel=1e-6)


def squares_pairs(count: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(images, reconstructions, masks): noise images whose reconstruction misses one random square."""
    images = torch.rand(count, 1, 32, 32, generator=generator)
    reconstructions, masks = images.clone(), torch.zeros(count, 32, 32)
    for i, (row, col) in enumerate(torch.randint(0, 24, (count, 2), generator=generator).tolist()):
        masks[i, row : row + 8, col : col + 8] = 1
        reconstructions[i, :, row : row + 8, col : col + 8] = 0.5  # the autoencoder's grey guess
    return images, reconstructions, masks


def test_segmenter_learns_where_image_and_reconstruction_disagree():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    segmenter = DefectSegmenter(in_channels=1, width=8, depth=2)
    optimizer = torch.optim.Adam(segmenter.parameters(), lr=3e-3)
    for _ in range(60):
        images, reconstructions, masks = squares_pairs(8, generator)
        loss = segmentation_loss(segmenter(images, reconstructions), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    images, reconstructions, masks = squares_pairs(16, generator)
    segmenter.eval()
    with torch.no_grad():
        logits = segmenter(images, reconstructions)
    metric = PixelMetrics(0.3)
    metric.update(logits, masks)
    assert metric.compute()["pixel_auroc"] > 0.97


def test_segmenter_stays_channels_last_after_loading_and_returns_contiguous_logits():
    torch.manual_seed(0)
    source = DefectSegmenter(3, width=4, depth=2)
    segmenter = DefectSegmenter(3, width=4, depth=2)
    segmenter.load_state_dict(source.state_dict())
    conv = segmenter.encoder[0][0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    images, reconstructions = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    segmenter.eval(), source.eval()
    logits = segmenter(images, reconstructions)
    assert logits.shape == (2, 16, 16) and logits.is_contiguous()
    assert torch.equal(logits, source(images, reconstructions))  # the loaded weights, not fresh ones

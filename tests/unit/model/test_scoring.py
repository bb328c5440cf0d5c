import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from anomaly_ae.data.images import as_float
from anomaly_ae.model.loss import reconstruction_loss
from anomaly_ae.model.scoring import anomaly_map, image_score


def test_anomaly_map_is_channel_mean_of_squared_residual():
    images, recon = torch.rand(3, 3, 16, 20), torch.rand(3, 3, 16, 20)
    expected = ((images.numpy() - recon.numpy()) ** 2).mean(axis=1)
    np.testing.assert_allclose(anomaly_map(images, recon, sigma=0).numpy(), expected, rtol=1e-6)


def test_smoothing_matches_scipy_gaussian_filter():
    images, recon = torch.rand(2, 1, 64, 64), torch.zeros(2, 1, 64, 64)
    raw = images.numpy()[:, 0] ** 2
    expected = np.stack([gaussian_filter(m, sigma=2.0, mode="reflect", truncate=4.0) for m in raw])
    # kornia's reflect excludes the edge pixel, scipy's repeats it: compare away from the border.
    got = anomaly_map(images, recon, sigma=2.0).numpy()
    np.testing.assert_allclose(got[:, 10:-10, 10:-10], expected[:, 10:-10, 10:-10], atol=1e-5)


def test_identical_reconstruction_gives_zero_map():
    images = torch.rand(2, 3, 16, 16)
    assert anomaly_map(images, images.clone(), sigma=4).abs().max() == 0


def test_image_score_reductions():
    maps = torch.arange(2 * 4 * 4, dtype=torch.float32).view(2, 4, 4)
    assert image_score(maps, "max").tolist() == [15.0, 31.0]
    assert image_score(maps, "mean").tolist() == [7.5, 23.5]
    assert image_score(maps, "topk_mean", topk=2).tolist() == [14.5, 30.5]
    with pytest.raises(
        ValueError, match=r"score.reduction='median' is not one of \('max', 'topk_mean', 'mean'\)"
    ):
        image_score(maps, "median")


def test_weighted_loss_normalises_clean_and_corrupted_separately():
    target = torch.zeros(1, 1, 2, 2)
    recon = torch.tensor([[[[1.0, 1.0], [3.0, 0.0]]]])
    mask = torch.tensor([[[[0.0, 0.0], [1.0, 0.0]]]])
    assert reconstruction_loss(recon, target, mask, None).item() == pytest.approx((1 + 1 + 9) / 4)
    # clean pixels: errors 1, 1, 0 -> 2/3; corrupted: 9
    assert reconstruction_loss(recon, target, mask, 0.25).item() == pytest.approx(0.25 * 2 / 3 + 0.75 * 9)


def test_as_float_scales_uint8():
    assert as_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [0.0, 1.0]

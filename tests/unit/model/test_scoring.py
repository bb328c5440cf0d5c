import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter
from skimage.metrics import structural_similarity

from anomaly_ae.data.images import as_float
from anomaly_ae.model.loss import reconstruction_loss
from anomaly_ae.model.scoring import (
    COMPONENTS,
    GMS_CONSTANT,
    LEARNED,
    RESIDUALS,
    anomaly_map,
    image_score,
    residual_map,
)


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


def test_gradient_loss_penalises_blur_not_a_uniform_shift():
    # Two reconstructions of a texture with the same squared error: a blur and a brightness shift.
    target = torch.from_numpy(np.random.default_rng(0).random((1, 1, 32, 32))).float()
    blurred = torch.from_numpy(gaussian_filter(target.numpy(), sigma=(0, 0, 1.5, 1.5), mode="reflect"))
    shifted = target + (blurred - target).pow(2).mean().sqrt()
    mask = torch.zeros(1, 1, 32, 32)
    mse_blur, mse_shift = (reconstruction_loss(r, target, mask) for r in (blurred, shifted))
    assert mse_blur.item() == pytest.approx(mse_shift.item(), rel=1e-5)
    blur, shift = (reconstruction_loss(r, target, mask, gradient_weight=0.5) for r in (blurred, shifted))
    assert shift.item() == pytest.approx(mse_shift.item(), rel=1e-5)  # same edges: no gradient term
    # A blur flattens the gradients: the edge term adds half the mean gradient distance, a large one.
    assert blur.item() - mse_blur.item() == pytest.approx(
        0.5 * residual_map(target, blurred, "gradient").mean().item(), rel=1e-5
    )
    assert blur.item() - mse_blur.item() > 0.1


def test_as_float_scales_uint8():
    assert as_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [0.0, 1.0]


def checkerboard(size: int) -> torch.Tensor:
    """(1, 1, size, size) of +-1 alternating per pixel: zero mean over every aligned 2x2 block."""
    index = torch.arange(size)
    return ((index[:, None] + index[None, :]) % 2 * 2 - 1).float()[None, None]


def test_multiscale_residual_weighs_pixel_scale_detail_by_a_third_and_tone_changes_fully():
    images = torch.full((1, 1, 16, 16), 0.5)  # 16 px: levels 1, 1/2, 1/4 (1/8 would be 2x2, skipped)
    detail = images + 0.1 * checkerboard(16)  # zero-mean detail: averaged away by every pooled level
    shifted = images + 0.1  # a change of tone: the same 0.01 at every level
    assert residual_map(images, detail, "squared") == pytest.approx(torch.full((1, 16, 16), 0.01))
    assert residual_map(images, detail, "multiscale") == pytest.approx(torch.full((1, 16, 16), 0.01 / 3))
    assert residual_map(images, shifted, "multiscale") == pytest.approx(torch.full((1, 16, 16), 0.01))


def test_gradient_residual_is_one_minus_gradient_magnitude_similarity():
    ramp = (0.1 * torch.arange(7.0)).expand(1, 1, 7, 7)  # 7 px: the full-size level only
    flat = torch.full((1, 1, 7, 7), 0.5)
    ga, gb = (0.1**2 + 1e-6) ** 0.5, 1e-6**0.5  # kornia's Sobel magnitude with its eps inside the root
    expected = 1 - (2 * ga * gb + GMS_CONSTANT) / (ga**2 + gb**2 + GMS_CONSTANT)
    got = residual_map(ramp, flat, "gradient")[0]
    assert got[1:-1, 1:-1] == pytest.approx(torch.full((5, 5), expected), rel=1e-5)  # inside the border
    assert expected > 0.9  # an edge that vanished (a blur) scores near 1


def test_gradient_residual_ignores_a_uniform_brightness_shift():
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5
    brighter = images + 0.3
    assert residual_map(images, brighter, "gradient").abs().max() < 1e-6
    assert residual_map(images, brighter, "squared").min() == pytest.approx(0.09)


@pytest.mark.parametrize("kind", [k for k in RESIDUALS if LEARNED not in COMPONENTS.get(k, (k,))])
def test_every_residual_of_an_exact_reconstruction_is_zero(kind):
    images = torch.rand(2, 3, 32, 32)
    assert residual_map(images, images.clone(), kind).abs().max() < 1e-6


def test_an_unknown_residual_is_refused_by_name():
    with pytest.raises(
        ValueError,
        match=r"score.residual='lpips' is not one of \('squared', 'multiscale', 'gradient', 'squared_and_gr",
    ):
        residual_map(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), "lpips")


@pytest.mark.parametrize("kind", [k for k in COMPONENTS if LEARNED not in COMPONENTS[k]])
def test_a_residual_of_components_stacks_each_component_map(kind):
    images, recon = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    stacked = residual_map(images, recon, kind)
    assert stacked.shape == (2, len(COMPONENTS[kind]), 32, 32)
    for index, part in enumerate(COMPONENTS[kind]):
        assert torch.equal(stacked[:, index], residual_map(images, recon, part))


def test_ssim_residual_matches_scikit_image_inside_the_border():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 40, 40, generator=generator)
    recon = (images + 0.3 * torch.rand(2, 3, 40, 40, generator=generator) - 0.15).clamp(0, 1)
    got = residual_map(images, recon, "ssim").numpy()
    for n in range(2):
        similarity = [
            structural_similarity(
                images[n, c].double().numpy(), recon[n, c].double().numpy(), data_range=1.0,
                gaussian_weights=True, sigma=1.5, use_sample_covariance=False, full=True,
            )[1]
            for c in range(3)
        ]  # fmt: skip
        expected = 1 - np.mean(similarity, axis=0)
        # The borders differ by padding only (torch reflect against scipy's mirror): compared inside.
        assert np.abs(got[n, 5:-5, 5:-5] - expected[5:-5, 5:-5]).max() < 1e-5
    assert got.mean() > 0.02  # the noise is far above the tolerance


def test_ssim_residual_flags_flattened_texture_that_keeps_its_mean_tone():
    generator = torch.Generator().manual_seed(1)
    texture = 0.5 + 0.2 * (torch.rand(1, 1, 48, 48, generator=generator) - 0.5)
    flattened = texture.clone()
    flattened[..., 16:32, 16:32] = texture[..., 16:32, 16:32].mean()  # a smudge: contrast gone, tone kept
    ssim_map = residual_map(texture, flattened, "ssim")[0]
    squared_map = residual_map(texture, flattened, "squared")[0]
    inside, outside = ssim_map[20:28, 20:28].mean(), ssim_map[:, :6].mean()
    # No contrast left: 1 - C2 / (var + C2) = 1 - 0.0009 / 0.0042 ~ 0.79 inside; identical, 0, outside.
    assert 0.7 < inside < 0.85 and outside < 1e-6
    # The squared residual of the same patch is the texture's own variance, 0.0033.
    assert squared_map[20:28, 20:28].mean() < 0.01

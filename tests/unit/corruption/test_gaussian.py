import pytest
import torch

from anomaly_ae.corruption.gaussian import GaussianNoiseCorruption
from tests.helpers import compose_config


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_noise_has_zero_mean_and_the_configured_std():
    images = torch.rand(8, 3, 64, 64)
    corrupted, mask = GaussianNoiseCorruption(std=0.15)(images, generator())
    noise = corrupted - images
    # 98,304 samples: the standard error of the std estimate is 0.15 / sqrt(2 * 98304) = 3.4e-4.
    assert noise.std().item() == pytest.approx(0.15, abs=2e-3)
    assert noise.mean().item() == pytest.approx(0.0, abs=2e-3)
    # Independent per channel: neighbouring channels are uncorrelated.
    assert torch.corrcoef(noise[:, :2].transpose(0, 1).flatten(1))[0, 1].abs() < 0.02
    assert torch.equal(mask, torch.ones(8, 1, 64, 64))


def test_same_seed_same_output_and_other_seed_differs():
    images = torch.rand(4, 1, 16, 16)
    corruption = GaussianNoiseCorruption()
    a, mask_a = corruption(images, generator(1))
    b, mask_b = corruption(images, generator(1))
    c, _ = corruption(images, generator(2))
    assert torch.equal(a, b) and torch.equal(mask_a, mask_b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_and_device_follow_the_batch(dtype):
    images = torch.rand(5, 3, 12, 20, dtype=dtype)
    corrupted, mask = GaussianNoiseCorruption()(images, generator())
    assert corrupted.shape == images.shape and mask.shape == (5, 1, 12, 20)
    assert corrupted.dtype == mask.dtype == dtype
    assert corrupted.device == mask.device == images.device


def test_clean_images_are_unchanged_and_masked_zero():
    images = torch.rand(4000, 1, 4, 4)
    corrupted, mask = GaussianNoiseCorruption(std=0.1, p_corrupt=0.3)(images, generator())
    changed = (corrupted != images).flatten(1)
    noised = mask.flatten(1)
    assert set(noised.unique().tolist()) == {0.0, 1.0}
    assert (noised == noised[:, :1]).all()  # whole images, not pixels
    assert changed[noised[:, 0] == 0].sum() == 0  # pixels change only where the mask is 1
    assert changed[noised[:, 0] == 1].all()
    assert noised[:, 0].mean().item() == pytest.approx(0.3, abs=0.025)


def test_clip_keeps_the_range():
    images = torch.rand(2, 3, 32, 32)
    unclipped, _ = GaussianNoiseCorruption(std=0.5)(images, generator())
    clipped, _ = GaussianNoiseCorruption(std=0.5, clip=True)(images, generator())
    assert unclipped.min() < 0 and unclipped.max() > 1
    assert torch.equal(clipped, unclipped.clamp(0, 1))


def test_anchor_noise_is_a_no_op_and_bad_values_are_named():
    images = torch.rand(2, 1, 8, 8)
    assert GaussianNoiseCorruption().anchor_noise(images, generator()) is images
    with pytest.raises(ValueError, match=r"corruption.std=0.0 must be > 0 \(corruption=none trains"):
        GaussianNoiseCorruption(std=0.0)
    with pytest.raises(ValueError, match=r"corruption.p_corrupt=1.5 must be in \[0, 1\]"):
        GaussianNoiseCorruption(p_corrupt=1.5)


def test_config_selects_it():
    cfg = compose_config(["corruption=gaussian"])
    assert cfg.corruption._target_ == "anomaly_ae.corruption.gaussian.GaussianNoiseCorruption"
    assert (cfg.corruption.std, cfg.corruption.p_corrupt, cfg.corruption.clip) == (0.2, 1.0, False)

"""AnomalyScorer's score options: per-pixel normalisation on clean statistics, flip averaging, keys."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anomaly_ae.model.autoencoder import ConvAutoencoder
from anomaly_ae.model.scorer import AnomalyScorer
from anomaly_ae.model.scoring import residual_map

SIZE = 16


class Zeros(nn.Module):
    """Reconstructs every image as black: the residual is the image squared, a baseline we choose."""

    def forward(self, images: Tensor) -> Tensor:
        return torch.zeros_like(images)


class Conv(nn.Module):
    """One fixed 3x3 convolution: mirror-equivariant when its kernel is left-right symmetric."""

    def __init__(self, kernel: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", kernel.reshape(1, 1, 3, 3))

    def forward(self, images: Tensor) -> Tensor:
        return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), self.weight)


def bright_border_images(count: int, generator: torch.Generator) -> Tensor:
    """(count, 1, S, S): a bright 2-pixel border (0.9) around a dark interior (0.2), plus uniform noise."""
    base = torch.full((SIZE, SIZE), 0.2)
    base[:2], base[-2:], base[:, :2], base[:, -2:] = 0.9, 0.9, 0.9, 0.9
    noise = 0.1 * (torch.rand(count, 1, SIZE, SIZE, generator=generator) - 0.5)
    return base + noise


def fitted_scorer(clean: Tensor, **options) -> AnomalyScorer:
    """A normalize=pixel scorer of `Zeros`, fitted on `clean` as AnomalyAE does at validation."""
    scorer = AnomalyScorer(Zeros(), image_size=SIZE, normalize="pixel", **options)
    residual = scorer.residual(clean).double()
    scorer.fit_normalization(residual.sum(0), residual.pow(2).sum(0), len(clean))
    return scorer


def test_normalised_residual_of_clean_images_has_zero_mean_and_unit_std_per_pixel():
    generator = torch.Generator().manual_seed(0)
    scorer = fitted_scorer(bright_border_images(4000, generator), sigma=0)
    raw = residual_map(held_out := bright_border_images(4000, generator), torch.zeros_like(held_out))
    assert raw[:, 0, 0].mean() > 0.7 and raw[:, 8, 8].mean() < 0.05  # the baseline differs 20-fold
    normalised = scorer.anomaly_map(held_out)  # new images of the same distribution
    assert normalised.mean(0).abs().max() < 0.1  # every pixel: ~0 mean
    assert (normalised.std(0) - 1).abs().max() < 0.1  # and ~unit std
    assert scorer.residual_mean[0, 0] == pytest.approx(float(raw[:, 0, 0].mean()), abs=0.01)


def test_a_pixel_with_a_large_baseline_no_longer_dominates_after_normalisation():
    generator = torch.Generator().manual_seed(1)
    clean = bright_border_images(500, generator)
    image = bright_border_images(1, generator)
    image[0, 0, 8, 8] += 0.3  # a defect: small next to the border's residual (~0.8), huge for the interior
    plain = AnomalyScorer(Zeros(), sigma=0, image_size=SIZE)(image)[0][0]
    normalised = fitted_scorer(clean, sigma=0)(image)[0][0]
    assert divmod(int(plain.argmax()), SIZE) != (8, 8)  # raw: a border pixel wins
    assert divmod(int(normalised.argmax()), SIZE) == (8, 8)  # normalised: the defect wins
    assert normalised[8, 8] > 5 * normalised[:2].max()  # clean border pixels: z-scores of a few units


def test_std_is_clamped_so_a_constant_pixel_cannot_blow_up():
    clean = torch.rand(64, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    clean[:, :, 0, 0] = 0.5  # the same value in every clean image: std 0
    scorer = fitted_scorer(clean, sigma=0)
    assert scorer.residual_std[0, 0] == pytest.approx(0.01 * float(scorer.residual_std.mean()), rel=1e-3)
    assert torch.isfinite(scorer.anomaly_map(clean)).all()


@pytest.mark.parametrize("residual", ["multiscale", "gradient"])
def test_every_residual_normalises_to_zero_mean_and_unit_std_on_clean_images(residual):
    generator = torch.Generator().manual_seed(1)
    scorer = fitted_scorer(bright_border_images(4000, generator), sigma=0, residual=residual)
    held_out = bright_border_images(4000, generator)
    raw = residual_map(held_out, torch.zeros_like(held_out), residual)
    assert (raw.mean(0).amax() / raw.mean(0).amin()) > 2  # a position-dependent baseline to remove
    normalised = scorer.anomaly_map(held_out)
    assert normalised.mean(0).abs().max() < 0.1
    # The gradient residual of noise is skewed (near 1 against a black reconstruction), so 4,000 draws
    # estimate each pixel's std less tightly: unit scale on average, every pixel within 0.2.
    assert normalised.std(0).mean() == pytest.approx(1, abs=0.02)
    assert (normalised.std(0) - 1).abs().max() < 0.2


def test_squared_and_gradient_averages_the_z_scores_of_each_component_on_its_own_statistics():
    generator = torch.Generator().manual_seed(3)
    clean, held_out = bright_border_images(2000, generator), bright_border_images(2000, generator)
    both = fitted_scorer(clean, sigma=0, residual="squared_and_gradient")
    squared, gradient = (fitted_scorer(clean, sigma=0, residual=kind) for kind in ("squared", "gradient"))
    assert both.residual_mean.shape == (2, SIZE, SIZE)
    # Each component keeps its own statistics: those of a scorer of that residual alone.
    assert torch.allclose(both.residual_std[0], squared.residual_std)
    assert torch.allclose(both.residual_std[1], gradient.residual_std)
    expected = 0.5 * (squared.anomaly_map(held_out) + gradient.anomaly_map(held_out))
    assert torch.allclose(both.anomaly_map(held_out), expected, atol=1e-5)
    assert both.anomaly_map(held_out).mean(0).abs().max() < 0.1  # clean images: ~0 mean per pixel


def test_squared_and_gradient_needs_per_pixel_normalisation():
    needs = "averages z-scored maps and needs score.normalize=pixel; got score.normalize=none"
    with pytest.raises(ValueError, match=f"score.residual=squared_and_gradient {needs}"):
        AnomalyScorer(Zeros(), image_size=SIZE, residual="squared_and_gradient")


def test_a_checkpoint_without_a_residual_key_scores_with_the_squared_residual():
    scorer = AnomalyScorer.from_config(Zeros(), {"sigma": 0.0}, SIZE)
    images = torch.rand(2, 1, SIZE, SIZE)
    assert scorer.residual_kind == "squared"
    assert torch.allclose(scorer.anomaly_map(images), images[:, 0].pow(2))
    assert AnomalyScorer.from_config(Zeros(), {"residual": "gradient"}, SIZE).residual_kind == "gradient"


def test_an_unknown_residual_fails_when_the_scorer_is_built():
    with pytest.raises(ValueError, match=r"score.residual='l1' is not one of"):
        AnomalyScorer(Zeros(), residual="l1")


def test_flip_average_of_a_mirror_symmetric_autoencoder_equals_the_plain_map():
    symmetric = Conv(torch.tensor([[0.1, 0.2, 0.1], [0.3, 0.5, 0.3], [0.0, 0.4, 0.0]]))
    images = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    plain_maps, plain_scores = AnomalyScorer(symmetric, sigma=1, image_size=SIZE)(images)
    maps, scores = AnomalyScorer(symmetric, sigma=1, image_size=SIZE, flip_average=True)(images)
    assert torch.allclose(maps, plain_maps, atol=1e-6) and torch.allclose(scores, plain_scores, atol=1e-6)


def test_flip_average_of_an_asymmetric_autoencoder_is_the_hand_computed_mean():
    shift = Conv(torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))  # copies the left pixel
    images = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    x = images[:, 0]
    left = torch.cat([x[..., :1], x[..., :-1]], dim=-1)  # what `shift` reconstructs
    right = torch.cat([x[..., 1:], x[..., -1:]], dim=-1)  # of the flipped image, flipped back
    expected = 0.5 * ((x - left) ** 2 + (x - right) ** 2)
    maps, scores = AnomalyScorer(shift, sigma=0, image_size=SIZE, flip_average=True)(images)
    assert torch.allclose(maps, expected, atol=1e-6)
    assert torch.allclose(scores, expected.flatten(1).amax(1))
    assert not torch.allclose(maps, (x - left) ** 2, atol=1e-3)  # the option changes this model's map


def test_normalize_none_keeps_the_state_dict_keys_and_strict_loading():
    autoencoder = ConvAutoencoder(in_channels=1, width=8, depth=2, dilations=[1, 2])
    old = AnomalyScorer.from_config(autoencoder, {"sigma": 1.0, "reduction": "max", "topk": 100}, SIZE)
    options = {"sigma": 1.0, "normalize": "none", "flip_average": True}
    new = AnomalyScorer.from_config(autoencoder, options, SIZE)
    expected = {f"autoencoder.{key}" for key in autoencoder.state_dict()}
    assert set(old.state_dict()) == set(new.state_dict()) == expected
    new.load_state_dict(old.state_dict())  # strict: a checkpoint written before the options loads
    pixel = AnomalyScorer.from_config(autoencoder, {"normalize": "pixel"}, SIZE)
    assert set(pixel.state_dict()) - expected == {"residual_mean", "residual_std"}
    with pytest.raises(RuntimeError, match="residual_mean"):
        pixel.load_state_dict(old.state_dict())  # no statistics in it: refused, not silently mean 0 / std 1


def test_normalize_refuses_unknown_values_missing_size_and_maps_of_another_size():
    with pytest.raises(ValueError, match="score.normalize='image'"):
        AnomalyScorer(Zeros(), normalize="image", image_size=SIZE)
    with pytest.raises(ValueError, match="needs the model input size"):
        AnomalyScorer(Zeros(), normalize="pixel")
    with pytest.raises(ValueError, match=r"statistics at \(16, 16\)"):
        AnomalyScorer(Zeros(), normalize="pixel", image_size=SIZE)(torch.rand(1, 1, 8, 8))


def test_a_learned_residual_owns_a_segmenter_whose_weights_are_in_the_state_dict():
    autoencoder = ConvAutoencoder(in_channels=1, width=4, depth=2, dilations=[1])
    learned = AnomalyScorer(
        autoencoder, image_size=SIZE, normalize="pixel", residual="squared_gradient_and_learned"
    )
    assert any(key.startswith("segmenter.") for key in learned.state_dict())
    assert learned.residual_mean.shape == (3, SIZE, SIZE)  # squared, gradient, learned
    plain = AnomalyScorer(autoencoder, image_size=SIZE, normalize="pixel", residual="squared_and_gradient")
    assert plain.segmenter is None and not any(key.startswith("segmenter.") for key in plain.state_dict())
    refused = "score.residual=learned z-scores the segmenter's logits on clean images"
    with pytest.raises(ValueError, match=refused):
        AnomalyScorer(autoencoder, image_size=SIZE, residual="learned")


def test_the_learned_component_is_z_scored_on_its_own_clean_statistics_like_the_others():
    generator = torch.Generator().manual_seed(4)
    autoencoder = ConvAutoencoder(in_channels=1, width=4, depth=2, dilations=[1]).eval()
    scorer = AnomalyScorer(
        autoencoder, sigma=0, image_size=SIZE, normalize="pixel", residual="squared_gradient_and_learned"
    ).eval()
    clean = bright_border_images(64, generator)
    with torch.no_grad():
        residual = scorer.residual(clean).double()  # (64, 3, S, S)
        logits = scorer.segmenter(clean, autoencoder(clean)).double()
        sums = torch.stack([torch.ones_like(residual).sum(0), residual.sum(0), residual.pow(2).sum(0)])
        scorer.fit_normalization(sums[1], sums[2], 64.0)
        z = scorer.normalized(scorer.residual(clean))
    assert torch.equal(residual[:, 2], logits)  # the third component is the segmenter's logit map
    assert torch.allclose(scorer.residual_mean[2], logits.mean(0).float(), atol=1e-5)
    assert torch.allclose(scorer.residual_std[2], logits.std(0, correction=0).float(), rtol=1e-3)
    assert z.mean(0).abs().max() < 1e-3 and z.shape == (64, SIZE, SIZE)  # clean images: 0 mean per pixel


def test_residual_map_refuses_the_learned_residual_that_only_the_scorer_computes():
    with pytest.raises(ValueError, match="score.residual=learned needs the trained segmenter"):
        residual_map(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8), "learned")

"""LRP of anomaly scores: conservation, localisation on a controlled toy, determinism, batching, coverage."""

from __future__ import annotations

import pytest
import torch

from anomaly_ae.explain import Method, UnsupportedLayerError, box_mask, explain
from anomaly_ae.explain.relevance import propagate
from anomaly_ae.explain.rules import COMPOSITES, build_composite
from anomaly_ae.model.autoencoder import ConvAutoencoder
from anomaly_ae.model.scorer import AnomalyScorer
from anomaly_ae.model.scoring import COMPONENTS

CONSERVATION_TOLERANCE = 1e-3  # relative; stabilisers (1e-6) and merged batch norms' eps leave ~1e-5
LRP = [Method(name, composite=name) for name in COMPOSITES]
ALL = [
    *LRP,
    Method("root", composite="epsilon", residual="root"),
    Method("gradient", kind="gradient", pooling="l2"),
    Method("gradient_x_input", kind="gradient_x_input"),
    Method("residual", kind="residual"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


def bias_free_autoencoder(norm: str, upsample: str, seed: int = 0) -> ConvAutoencoder:
    """Random tiny model with every bias and batch-norm shift at 0, so no bias absorbs relevance."""
    torch.manual_seed(seed)
    model = ConvAutoencoder(
        3, width=8, depth=2, dilations=(1, 2), norm=norm, upsample=upsample, skip_init_logit=0.0
    )
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial scales, zero shifts
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.zero_()
            elif getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return model.eval()


def blur_autoencoder() -> ConvAutoencoder:
    """Hand-set model whose output is a blur of its input: it removes small spots, as a trained one should.

    Every layer after the input mixes a positive and a negative path (2 * a - a), so alpha-beta rules see
    both signs, as in a trained network; skip gates are closed.
    """
    model = ConvAutoencoder(1, width=4, depth=2, dilations=(1,), norm="none", skip_init_logit=-30.0)
    box = torch.full((4, 4), 1 / 16)
    taps = torch.tensor([0.25, 0.75, 0.75, 0.25])
    bilinear = taps[:, None] * taps[None]
    with torch.no_grad():
        for p in model.parameters():
            if p is not model.skips[0].logit:
                p.zero_()
        model.stem[0].weight[:2, 0, 1, 1] = 1
        for down in model.down:
            down[0].weight[:2, 0], down[0].weight[:2, 1] = 2 * box, -box
        for up in model.up:
            up[0].weight[0, :2], up[0].weight[1, :2] = 2 * bilinear, -bilinear
        model.head.weight[0, 0, 1, 1], model.head.weight[0, 1, 1, 1] = 2, -1
    return model.eval()


def spot_image() -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth normal image with one altered 6x6 square; returns (1, 1, 32, 32) image and (32, 32) mask."""
    columns = torch.arange(32.0).expand(32, 32)
    image = (0.4 + 0.1 * torch.sin(columns / 5))[None, None].clone()
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[12:18, 18:24] = True
    image[0, 0][mask] = 0.95
    return image, mask


@pytest.mark.parametrize("norm,upsample", [("batch", "transposed"), ("none", "bilinear")])
@pytest.mark.parametrize("composite", ["epsilon", "epsilon_plus_flat", "zplus"])
def test_reconstruction_branch_conserves_relevance(norm, upsample, composite):
    model = bias_free_autoencoder(norm, upsample)
    images = torch.rand(2, 3, 32, 32)
    region = box_mask((8, 4, 20, 30), (32, 32)).float()  # explain the summed output inside a box
    composite = build_composite(composite, epsilon=1e-9)
    _, relevance = propagate(model, images, composite, lambda recon: recon * region)
    with torch.no_grad():
        outputs = model(images) * region
    error = (relevance.sum((1, 2, 3)) - outputs.sum((1, 2, 3))).abs() / outputs.abs().sum((1, 2, 3))
    assert error.max() < CONSERVATION_TOLERANCE


def test_sigmoid_output_passes_relevance_and_conserves_it():
    model = bias_free_autoencoder("batch", "bilinear")
    model.output = torch.nn.Sigmoid()  # as built by output="sigmoid": a parameter-free last layer
    # float64: the head's pre-activations near 0 carry relevance ~0.5 each, so R / z needs the precision.
    model, images = model.double(), torch.rand(2, 3, 32, 32, dtype=torch.float64)
    _, relevance = propagate(model, images, build_composite("epsilon", epsilon=1e-9), lambda recon: recon)
    with torch.no_grad():
        outputs = model(images)
    assert outputs.min() > 0 and outputs.max() < 1
    error = (relevance.sum((1, 2, 3)) - outputs.sum((1, 2, 3))).abs() / outputs.sum((1, 2, 3))
    assert error.max() < CONSERVATION_TOLERANCE


def test_biases_absorb_relevance_so_the_bias_free_check_is_not_vacuous():
    model = bias_free_autoencoder("none", "transposed")
    with torch.no_grad():
        model.head.bias.fill_(0.5)
    images = torch.rand(1, 3, 32, 32)
    _, relevance = propagate(model, images, build_composite("epsilon", epsilon=1e-9), lambda recon: recon)
    with torch.no_grad():
        outputs = model(images)
    absorbed = outputs.sum() - relevance.sum()
    assert absorbed == pytest.approx(0.5 * outputs[0].numel(), rel=1e-3)


@pytest.mark.parametrize("method", [m for m in ALL if m.kind == "lrp"], ids=lambda m: m.name)
def test_total_relevance_equals_the_score_without_biases(method):
    scorer = AnomalyScorer(bias_free_autoencoder("batch", "transposed"), sigma=1.0)
    result = explain(scorer, torch.rand(2, 3, 32, 32), method)
    if method.composite != "epsilon_alpha2_beta1_flat":  # alpha-beta conserves only where both signs exist
        torch.testing.assert_close(result.relevance.sum((1, 2, 3)), result.scores, rtol=1e-3, atol=0)


@pytest.mark.parametrize("method", [LRP[0], ALL[len(LRP)]], ids=lambda m: m.name)
def test_the_multiscale_residual_is_quadratic_so_lrp_still_conserves_the_score(method):
    scorer = AnomalyScorer(bias_free_autoencoder("batch", "transposed"), sigma=1.0, residual="multiscale")
    result = explain(scorer, torch.rand(2, 3, 32, 32), method)
    torch.testing.assert_close(result.relevance.sum((1, 2, 3)), result.scores, rtol=1e-3, atol=0)


@pytest.mark.parametrize("method", [LRP[0], Method("root", residual="root")], ids=lambda m: m.name)
@pytest.mark.parametrize("residual", list(COMPONENTS))
def test_lrp_of_a_residual_of_components_explains_its_squared_one_beside_the_models_map(method, residual):
    autoencoder = bias_free_autoencoder("batch", "transposed")
    both = AnomalyScorer(autoencoder, 1.0, image_size=32, normalize="pixel", residual=residual)
    parts = len(COMPONENTS[residual])
    std = torch.rand(parts, 32, 32, generator=torch.Generator().manual_seed(0)) + 0.5
    both.fit_statistics(torch.zeros(parts, 32, 32), std)  # zero means: the squared z-score is then quadratic
    squared = AnomalyScorer(autoencoder, 1.0, image_size=32, normalize="pixel")
    squared.fit_statistics(torch.zeros(32, 32), std[0])
    images = torch.rand(2, 3, 32, 32)
    result, expected = explain(both, images, method), explain(squared, images, method)
    torch.testing.assert_close(result.relevance, expected.relevance)
    torch.testing.assert_close(result.scores, expected.scores)
    torch.testing.assert_close(result.relevance.sum((1, 2, 3)), result.scores, rtol=1e-3, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(result.maps, both.anomaly_map(images))  # the panel shows the model's map
        assert (result.maps - squared.anomaly_map(images)).abs().max() > 0.1


def test_lrp_of_the_gradient_residual_is_refused_and_the_gradient_still_explains_it():
    scorer = AnomalyScorer(bias_free_autoencoder("batch", "transposed"), sigma=1.0, residual="gradient")
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ValueError, match=r"score.residual=gradient: use explain=gradient or"):
        explain(scorer, images, LRP[0])
    result = explain(scorer, images, Method("gradient", kind="gradient", pooling="l2"))
    assert result.heatmap.shape == (2, 32, 32) and result.heatmap.abs().sum() > 0


@pytest.mark.parametrize("method", [m for m in ALL if m.kind != "residual"], ids=lambda m: m.name)
def test_relevance_concentrates_on_the_altered_region(method):
    image, mask = spot_image()
    result = explain(AnomalyScorer(blur_autoencoder(), sigma=1.0), image, method)
    heat = result.heatmap[0].clamp_min(0)
    assert heat[mask].sum() / heat.sum() > 0.5  # the square is 3.5 % of the image
    assert mask.flatten()[heat.argmax()]


def test_the_plain_residual_map_spreads_over_the_blurred_border():
    image, mask = spot_image()
    result = explain(AnomalyScorer(blur_autoencoder(), sigma=1.0), image, Method("residual", kind="residual"))
    heat = result.heatmap[0]
    torch.testing.assert_close(heat, result.maps[0])
    assert heat[mask].sum() / heat.sum() < 0.5  # why a gated explanation of the score localises better


@pytest.mark.parametrize("method", ALL, ids=lambda m: m.name)
def test_explanations_are_deterministic_and_batch_independent(method):
    scorer = AnomalyScorer(bias_free_autoencoder("batch", "transposed", seed=1), sigma=1.0)
    images = torch.rand(3, 3, 32, 32)
    first, second = explain(scorer, images, method), explain(scorer, images, method)
    assert torch.equal(first.relevance, second.relevance)
    single = torch.cat([explain(scorer, image[None], method).relevance for image in images])
    torch.testing.assert_close(first.relevance, single, rtol=1e-4, atol=1e-6)


def test_explaining_leaves_the_model_unchanged():
    model = bias_free_autoencoder("batch", "transposed")
    images = torch.rand(2, 3, 32, 32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(images)
    explain(AnomalyScorer(model, sigma=1.0), images, Method("e", composite="epsilon_gamma_box"))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert set(dict(model.named_modules())) == set(
        dict(bias_free_autoencoder("batch", "transposed").named_modules())
    )
    with torch.no_grad():
        torch.testing.assert_close(model(images), before, rtol=0, atol=0)


def test_region_score_and_its_relevance_stay_inside_the_region():
    scorer = AnomalyScorer(bias_free_autoencoder("batch", "transposed"), sigma=1.0)
    images = torch.rand(2, 3, 32, 32)
    region = box_mask((4, 4, 12, 12), (32, 32)).expand(2, -1, -1, -1)
    result = explain(scorer, images, Method("root", composite="epsilon", residual="root"), region)
    torch.testing.assert_close(result.scores, result.maps[:, 4:12, 4:12].flatten(1).amax(1))
    # sigma 1 px: the smoothing kernel reaches 4 px, so no relevance beyond the box grown by 4 px
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[0:16, 0:16] = False
    assert result.relevance.sum(1)[:, outside].abs().max() == 0


@pytest.mark.parametrize("kwargs", [{"norm": "group"}, {"norm": "instance"}, {"activation": "gelu"}])
def test_unsupported_layers_raise_a_clear_error(kwargs):
    scorer = AnomalyScorer(ConvAutoencoder(1, width=8, depth=2, dilations=(1,), **kwargs), sigma=1.0)
    images = torch.rand(1, 1, 32, 32)
    with pytest.raises(UnsupportedLayerError, match="has no LRP rule"):
        explain(scorer, images, Method("e", composite="epsilon_plus_flat"))
    assert explain(scorer, images, Method("g", kind="gradient_x_input")).heatmap.isfinite().all()


def test_method_config_is_validated():
    with pytest.raises(ValueError, match="composite"):
        Method("x", composite="lrp_magic")
    with pytest.raises(ValueError, match="residual"):
        Method("x", composite="epsilon", residual="cube")
    with pytest.raises(ValueError, match="unknown explain keys"):
        Method.from_config({"name": "x", "composite": "epsilon", "epsilon_": 0.1})


def test_lrp_epsilon_equals_half_gradient_x_input_with_biases():
    # LRP-0 through a piecewise-linear net is gradient x input, layer by layer (biases included), and the
    # gated square takes s, not the 2s of the gradient: a check of every canonizer and sum on a full model.
    model = bias_free_autoencoder("batch", "transposed", seed=2)
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.uniform_(-0.1, 0.1)
    scorer = AnomalyScorer(model, sigma=1.0)
    images = torch.rand(2, 3, 32, 32)
    lrp = explain(scorer, images, Method("e", composite="epsilon", epsilon=1e-9, stabilizer=1e-9))
    gxi = explain(scorer, images, Method("g", kind="gradient_x_input"))
    torch.testing.assert_close(lrp.relevance, gxi.relevance / 2, rtol=1e-3, atol=1e-6)


def test_root_relevance_is_the_non_negative_share_of_each_pixel():
    model = bias_free_autoencoder("batch", "transposed", seed=3)
    with torch.no_grad():
        model.head.bias.fill_(0.3)  # biases do not matter: nothing is propagated through f
    result = explain(AnomalyScorer(model, sigma=1.0), torch.rand(2, 3, 32, 32), Method("r", residual="root"))
    assert result.relevance.min() >= 0
    torch.testing.assert_close(result.relevance.sum((1, 2, 3)), result.scores, rtol=1e-5, atol=0)


@pytest.mark.parametrize("composite", COMPOSITES)
def test_skipping_the_discarded_backward_changes_nothing_but_the_work(composite):
    torch.manual_seed(0)
    model = ConvAutoencoder(3, width=8, depth=2, dilations=(1, 2), upsample="bilinear").eval()
    images = torch.rand(2, 3, 32, 32)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    results, conv_backwards = [], []
    for shortcut in (False, True):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            results.append(propagate(model, images, build_composite(composite), lambda r: r, shortcut)[1])
        events = prof.key_averages()
        conv_backwards.append(sum(e.count for e in events if e.key == "aten::convolution_backward"))
    torch.testing.assert_close(results[1], results[0], rtol=0, atol=0)
    assert conv_backwards[0] - conv_backwards[1] == convs  # each conv's own backward, no longer computed

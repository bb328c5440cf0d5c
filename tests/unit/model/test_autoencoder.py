from pathlib import Path

import pytest
import torch

from anomaly_ae.model.autoencoder import ConvAutoencoder


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("norm", ["none", "batch", "instance", "group"])
def test_reconstruction_has_input_shape_and_dtype(channels, norm):
    model = ConvAutoencoder(in_channels=channels, width=8, depth=3, dilations=(1, 2), norm=norm)
    images = torch.rand(2, channels, 32, 48)
    for mode in (model.train, model.eval):
        mode()
        out = model(images)
        assert out.shape == images.shape
        assert out.dtype == torch.float32


@pytest.mark.parametrize("skips", [True, False])
@pytest.mark.parametrize("upsample", ["transposed", "bilinear"])
def test_every_used_parameter_gets_a_gradient(skips, upsample):
    model = ConvAutoencoder(in_channels=3, width=8, depth=3, dilations=(1, 2), skips=skips, upsample=upsample)
    model(torch.rand(2, 3, 32, 32)).square().mean().backward()
    for name, parameter in model.named_parameters():
        if not skips and name.startswith("skips."):
            assert parameter.grad is None, name  # disabled skips must not touch the output
            continue
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize(
    ("min_stride", "joined"),
    [(2, ["skips.0", "skips.1", "skips.2"]), (4, ["skips.0", "skips.1"]), (8, ["skips.0"]), (16, [])],
)
def test_skip_min_stride_keeps_only_the_coarser_skips(min_stride, joined):
    # depth 4: skips.0 joins at H/8, skips.1 at H/4, skips.2 at H/2.
    model = ConvAutoencoder(
        1, width=4, depth=4, dilations=(1,), skip_min_stride=min_stride, skip_init_logit=0.0
    )
    model(torch.rand(2, 1, 32, 32)).square().mean().backward()
    got = sorted(
        {
            name.rsplit(".", 1)[0]
            for name, p in model.named_parameters()
            if name.startswith("skips.") and p.grad is not None and p.grad.abs().sum() > 0
        }
    )
    assert got == joined
    assert len(model.skips) == 3  # built anyway: one set of checkpoint keys for every stride


def test_skip_min_stride_must_be_a_power_of_two():
    with pytest.raises(ValueError, match=r"model.skip_min_stride=3 is not a power of 2 >= 2"):
        ConvAutoencoder(skip_min_stride=3)


def test_skip_dropout_closes_every_skip_of_the_drawn_images_in_training_only():
    kwargs = {"in_channels": 1, "width": 4, "depth": 3, "dilations": (1,), "norm": "none"}
    dropped = ConvAutoencoder(**kwargs, skip_dropout=0.5, skip_init_logit=0.0)
    closed = ConvAutoencoder(**kwargs, skips=False)
    closed.load_state_dict(dropped.state_dict())  # same keys: every skip module is built either way
    opened = ConvAutoencoder(**kwargs, skip_init_logit=0.0)
    opened.load_state_dict(dropped.state_dict())
    images = torch.rand(16, 1, 32, 32)
    torch.manual_seed(0)
    keep = (torch.rand(16, 1, 1, 1) >= 0.5).flatten()  # the draw the model makes after the same seed
    torch.manual_seed(0)
    out = dropped.train()(images)
    assert 0 < keep.sum() < 16  # both kinds in the batch
    torch.testing.assert_close(out[keep], opened.train()(images)[keep])
    torch.testing.assert_close(out[~keep], closed.train()(images)[~keep])
    assert not torch.allclose(out[~keep], opened(images)[~keep])  # the skips do change the output
    torch.testing.assert_close(dropped.eval()(images), opened.eval()(images))  # eval: every skip open


def test_skip_dropout_must_be_a_probability_below_one():
    with pytest.raises(ValueError, match=r"model.skip_dropout=1.0 is not in \[0, 1\)"):
        ConvAutoencoder(skip_dropout=1.0)


def test_skip_gates_start_mostly_closed():
    model = ConvAutoencoder(in_channels=1, width=8, depth=3, skip_init_logit=-2.0)
    assert len(model.skips) == 2  # at H/4 and H/2, never at full resolution
    for skip in model.skips:
        assert torch.allclose(torch.sigmoid(skip.logit), torch.tensor(0.1192), atol=1e-4)


def test_width_doubles_up_to_max_width():
    model = ConvAutoencoder(in_channels=1, width=16, depth=4, max_width=64)
    assert [down[0].out_channels for down in model.down] == [32, 64, 64, 64]


def test_size_not_divisible_by_depth_is_a_clear_error():
    model = ConvAutoencoder(in_channels=1, width=8, depth=3)
    with pytest.raises(ValueError, match=r"input size \(30, 32\) must be divisible by 2\*\*depth = 8"):
        model(torch.rand(1, 1, 30, 32))


def test_unknown_norm_names_the_options():
    with pytest.raises(
        ValueError, match=r"model.norm='layer' is not one of \('none', 'batch', 'instance', 'group'\)"
    ):
        ConvAutoencoder(norm="layer")


def test_integer_skip_logit_from_the_command_line_is_accepted():
    model = ConvAutoencoder(in_channels=1, width=8, depth=2, skip_init_logit=0)
    assert model.skips[0].logit.dtype == torch.float32 and float(model.skips[0].logit.detach().mean()) == 0.0


@pytest.mark.parametrize("padding_mode", ["zeros", "replicate", "reflect"])
def test_padding_modes_keep_the_shape(padding_mode):
    model = ConvAutoencoder(
        1, width=8, depth=3, dilations=(1, 2), upsample="bilinear", padding_mode=padding_mode
    )
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 1, 64, 64)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert {c.padding_mode for c in convs} == {padding_mode}


def test_unknown_padding_mode_names_the_options():
    with pytest.raises(
        ValueError, match=r"model.padding_mode='circular' is not one of \('zeros', 'replicate', 'reflect'\)"
    ):
        ConvAutoencoder(padding_mode="circular")


def test_every_model_config_builds_without_its_run_options():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from anomaly_ae.cli.common import CONF_DIR
    from anomaly_ae.model.autoencoder import RUN_OPTIONS, architecture
    from tests.helpers import compose_config

    for path in sorted((Path(CONF_DIR) / "model").glob("*.yaml")):
        # Composed, not read raw: a model file may extend another through its defaults list.
        config = OmegaConf.to_container(compose_config([f"model={path.stem}"]).model)
        assert set(RUN_OPTIONS) <= set(config), path  # the run options are config values
        model = instantiate(architecture(config), in_channels=1)
        images = torch.rand(2, 1, 64, 64)
        assert model.eval()(images).shape == images.shape


def test_bottleneck_channels_squeeze_the_code():
    model = ConvAutoencoder(1, width=8, depth=2, dilations=(1,), skips=False, bottleneck_channels=3)
    encoded = model.down[1](model.down[0](model.stem(torch.zeros(2, 1, 16, 16))))
    code = model.squeeze[0](model.bottleneck(encoded))
    assert code.shape == (2, 3, 4, 4)  # 3 channels at H/4: 48 numbers for a 256-pixel image
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 1, 16, 16)
    plain = ConvAutoencoder(1, width=8, depth=2, dilations=(1,))
    assert isinstance(plain.squeeze, torch.nn.Identity)
    # Without it the parameter names are unchanged, so earlier checkpoints still load.
    assert not any(name.startswith("squeeze") for name in plain.state_dict())
    assert any(name.startswith("squeeze.0") for name in model.state_dict())


def test_sigmoid_output_keeps_reconstructions_in_the_image_range():
    torch.manual_seed(0)
    images = torch.rand(2, 1, 32, 32)
    linear = ConvAutoencoder(1, width=8, depth=2, dilations=(1,)).eval()
    with torch.no_grad():  # an output bias that pushes a linear head out of [0, 1]
        linear.head.bias.fill_(3.0)
    sigmoid = ConvAutoencoder(1, width=8, depth=2, dilations=(1,), output="sigmoid").eval()
    sigmoid.load_state_dict(linear.state_dict())  # same parameter names: checkpoints load either way
    assert linear(images).abs().max() > 1
    out = sigmoid(images)
    assert out.min() > 0 and out.max() < 1
    torch.testing.assert_close(out, torch.sigmoid(linear(images)))


def test_down_kernel_3_halves_the_resolution_like_4():
    model = ConvAutoencoder(1, width=8, depth=3, dilations=(1,), down_kernel=3)
    assert {down[0].kernel_size for down in model.down} == {(3, 3)}
    h = model.stem(torch.zeros(1, 1, 64, 64))
    for down in model.down:
        h = down(h)
    assert h.shape[-2:] == (8, 8)
    assert model(torch.rand(2, 1, 64, 64)).shape == (2, 1, 64, 64)


def test_unknown_output_and_down_kernel_name_the_options():
    with pytest.raises(ValueError, match=r"model.output='tanh' is not one of \('linear', 'sigmoid'\)"):
        ConvAutoencoder(output="tanh")
    with pytest.raises(ValueError, match=r"model.down_kernel=5 is not one of \(3, 4\)"):
        ConvAutoencoder(down_kernel=5)


def test_spatial_skip_gates_start_as_the_per_channel_gates():
    torch.manual_seed(0)
    channel = ConvAutoencoder(1, width=4, depth=3, dilations=(1,), skip_gate="channel").eval()
    spatial = ConvAutoencoder(1, width=4, depth=3, dilations=(1,), skip_gate="spatial").eval()
    missing, unexpected = spatial.load_state_dict(channel.state_dict(), strict=False)
    assert not unexpected and missing and all(".where." in name for name in missing)
    images = torch.rand(2, 1, 32, 32)
    assert torch.equal(spatial(images), channel(images))  # zero last layer: the same function at init


def test_spatial_skip_gate_learns_to_close_on_a_defect_and_stay_open_elsewhere():
    # The target holds detail only the encoder features carry; inside a square the encoder features also
    # carry a defect. The best mix takes the encoder everywhere but there: a per-pixel decision that a
    # per-channel gate cannot make.
    from anomaly_ae.model.autoencoder import GatedSkip

    torch.manual_seed(0)
    decoded = torch.randn(8, 4, 16, 16)
    target = decoded + torch.randn(8, 4, 16, 16)
    defect = torch.zeros(1, 1, 16, 16)
    defect[..., 4:10, 4:10] = 1
    encoded = target + 6 * defect * torch.randn(8, 4, 16, 16)
    skip = GatedSkip(4, init_logit=-2.0, kind="spatial")
    optimizer = torch.optim.Adam(skip.parameters(), lr=0.05)
    for _ in range(150):
        optimizer.zero_grad()
        (skip(decoded, encoded) - target).square().mean().backward()
        optimizer.step()
    with torch.no_grad():
        gate = skip.gate(decoded, encoded).mean(dim=(0, 1))
    inside, outside = gate[5:9, 5:9].mean(), gate[defect[0, 0] == 0].mean()
    assert outside > 0.8 and inside < 0.3, (float(inside), float(outside))


def test_unknown_skip_gate_names_the_options():
    with pytest.raises(ValueError, match=r"model.skip_gate='pixel' is not one of \('channel', 'spatial'\)"):
        ConvAutoencoder(skip_gate="pixel")

"""Convolutional autoencoder that projects images onto the manifold of normal images.

Pure PyTorch: no Lightning, no Hydra, no loss. Scoring lives in `anomaly_ae.model.scoring`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

NORMS = ("none", "batch", "instance", "group")
PADDINGS = ("zeros", "replicate", "reflect")
ACTIVATIONS = {"relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "gelu": nn.GELU, "silu": nn.SiLU}
OUTPUTS = {"linear": nn.Identity, "sigmoid": nn.Sigmoid}
SKIP_GATES = ("channel", "spatial")

# Keys of conf/model that say how to run the model, not what it is: never passed to its constructor.
RUN_OPTIONS = ("compile", "channels_last")  # how to run the model, not what it is


def architecture(config: Mapping) -> dict:
    """A model config (with `_target_`) without its run options, ready to instantiate."""
    return {key: value for key, value in config.items() if key not in RUN_OPTIONS}


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"model.norm={kind!r} is not one of {NORMS}")


def _act(kind: str) -> nn.Module:
    if kind not in ACTIVATIONS:
        raise ValueError(f"model.activation={kind!r} is not one of {tuple(ACTIVATIONS)}")
    return ACTIVATIONS[kind]()


def conv_block(
    c_in: int, c_out: int, norm: str, act: str, padding_mode: str = "zeros", **conv: int
) -> nn.Sequential:
    """Conv -> norm -> activation; the conv has no bias when a norm follows it."""
    kernel = conv.pop("kernel_size", 3)
    padding = conv.pop("padding", kernel // 2 * conv.get("dilation", 1))
    layer = nn.Conv2d(
        c_in, c_out, kernel, padding=padding, bias=norm == "none", padding_mode=padding_mode, **conv
    )
    return nn.Sequential(layer, _norm(norm, c_out), _act(act))


class DilatedResidual(nn.Module):
    """3x3 dilated conv block with a residual path: wide context at the bottleneck."""

    def __init__(
        self, channels: int, dilation: int, norm: str, act: str, padding_mode: str = "zeros"
    ) -> None:
        super().__init__()
        self.block = conv_block(channels, channels, norm, act, padding_mode, dilation=dilation)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


class GatedSkip(nn.Module):
    """Mix decoder and encoder features with a learned coefficient in [0, 1].

    `channel`: one coefficient per channel, the same at every pixel. `spatial`: a small conv head on the
    decoder and encoder features adds a per-pixel term to it, so the skip can close where the encoder
    sees what the decoder did not predict from context (a defect: training corruption makes copying it
    costly) and stay open on the normal fine detail that only the encoder carries.
    """

    def __init__(self, channels: int, init_logit: float, kind: str = "channel") -> None:
        super().__init__()
        # Starts mostly closed: an open skip lets the network copy anomalies straight to the output.
        self.logit = nn.Parameter(torch.full((1, channels, 1, 1), float(init_logit)))  # ints from the CLI too
        self.where = None
        if kind == "spatial":
            hidden = 8
            self.where = nn.Sequential(
                nn.Conv2d(2 * channels, hidden, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(hidden, 1, 1)
            )
            # Zero last layer: training starts from the per-channel gate.
            nn.init.zeros_(self.where[-1].weight)
            nn.init.zeros_(self.where[-1].bias)

    def gate(self, decoded: Tensor, encoded: Tensor) -> Tensor:
        """The mix coefficient: (1, C, 1, 1) for `channel`, (N, C, h, w) for `spatial`."""
        logit = self.logit
        if self.where is not None:
            logit = logit + self.where(torch.cat([decoded, encoded], dim=1))
        return torch.sigmoid(logit)

    def forward(self, decoded: Tensor, encoded: Tensor) -> Tensor:
        gate = self.gate(decoded, encoded)
        return (1 - gate) * decoded + gate * encoded


class ConvAutoencoder(nn.Module):
    """Strided-conv encoder, dilated bottleneck, upsampling decoder with optional gated skips.

    Args:
        in_channels: 1 for grayscale data, 3 for colour.
        width: channels after the stem; doubled at every downsampling up to `max_width`.
        depth: number of stride-2 downsamplings; input sides must be divisible by 2**depth.
        dilations: one residual dilated conv per entry at the bottleneck.
        skips: gated skip connections at the downsampled resolutions (never at full resolution).
        skip_gate: "channel" (one learned coefficient per channel) or "spatial" (plus a per-pixel term
            computed from the features, see `GatedSkip`).
        skip_min_stride: the finest resolution that gets a skip, as a downsampling factor: 2 (H/2 and
            coarser, every skip), 4 (H/4 and coarser), ...; finer skips are built but never used.
        skip_dropout: in training, the probability that an image passes through the decoder with every
            skip closed, so the bottleneck alone must reconstruct it too; no effect in eval mode.
        upsample: "transposed" (ConvTranspose2d) or "bilinear" (upsample + conv).
        padding_mode: of every conv but the transposed ones: "zeros", or "replicate"/"reflect", which
            keep the image border from looking unlike its inside (zero padding makes borders light up).
        bottleneck_channels: if set, the code is squeezed to this many channels by a 1x1 conv (capacity
            control of a plain autoencoder; use it with skips=False, which would otherwise bypass it).
        down_kernel: kernel size of the stride-2 downsampling convs (4, or 3 as in many plain autoencoders).
        output: "linear" head, or "sigmoid", which keeps reconstructions inside the [0, 1] image range.
    """

    def __init__(
        self,
        in_channels: int = 3,
        width: int = 32,
        depth: int = 4,
        max_width: int = 256,
        dilations: Sequence[int] = (1, 2, 4, 8, 16),
        norm: str = "batch",
        activation: str = "leaky_relu",
        skips: bool = True,
        skip_init_logit: float = -2.0,
        skip_min_stride: int = 2,
        skip_gate: str = "channel",
        skip_dropout: float = 0.0,
        upsample: str = "transposed",
        padding_mode: str = "zeros",
        bottleneck_channels: int | None = None,
        down_kernel: int = 4,
        output: str = "linear",
    ) -> None:
        super().__init__()
        if upsample not in ("transposed", "bilinear"):
            raise ValueError(f"model.upsample={upsample!r} is not one of ('transposed', 'bilinear')")
        if padding_mode not in PADDINGS:
            raise ValueError(f"model.padding_mode={padding_mode!r} is not one of {PADDINGS}")
        if down_kernel not in (3, 4):
            raise ValueError(f"model.down_kernel={down_kernel!r} is not one of (3, 4)")
        if skip_min_stride < 2 or skip_min_stride & (skip_min_stride - 1):
            raise ValueError(f"model.skip_min_stride={skip_min_stride!r} is not a power of 2 >= 2")
        if not 0 <= skip_dropout < 1:
            raise ValueError(f"model.skip_dropout={skip_dropout!r} is not in [0, 1)")
        if skip_gate not in SKIP_GATES:
            raise ValueError(f"model.skip_gate={skip_gate!r} is not one of {SKIP_GATES}")
        if output not in OUTPUTS:
            raise ValueError(f"model.output={output!r} is not one of {tuple(OUTPUTS)}")
        pad = padding_mode
        self.in_channels, self.depth = in_channels, depth
        widths = [min(width * 2**i, max_width) for i in range(depth + 1)]
        self.stem = conv_block(in_channels, widths[0], norm, activation, pad)
        self.down = nn.ModuleList(
            conv_block(
                widths[i], widths[i + 1], norm, activation, pad, kernel_size=down_kernel, stride=2, padding=1
            )
            for i in range(depth)
        )
        self.bottleneck = nn.Sequential(
            *(DilatedResidual(widths[-1], d, norm, activation, pad) for d in dilations)
        )
        # Identity by default, so checkpoints without a squeezed code keep their parameter names.
        self.squeeze = nn.Identity()
        if bottleneck_channels is not None:
            self.squeeze = nn.Sequential(
                nn.Conv2d(widths[-1], bottleneck_channels, 1),  # the code: (N, bottleneck_channels, h, w)
                *conv_block(bottleneck_channels, widths[-1], norm, activation, kernel_size=1),
            )
        self.up = nn.ModuleList(
            self._up_block(widths[i + 1], widths[i], norm, activation, upsample, pad)
            for i in reversed(range(depth))
        )
        # Skip i joins the decoder output at the resolution of encoder stage i (H/2**i, i >= 1). All are
        # built whatever skip_min_stride says, so every checkpoint with one skip_gate has the same keys.
        self.skips = nn.ModuleList(
            GatedSkip(widths[i], skip_init_logit, skip_gate) for i in reversed(range(1, depth))
        )
        finest = skip_min_stride.bit_length() - 1  # log2: the stage index of the finest skip used
        self.used_skips = max(0, len(self.skips) - finest + 1) if skips else 0  # skips[:used_skips] join
        self.skip_dropout = float(skip_dropout)
        self.head = nn.Conv2d(widths[0], in_channels, 3, padding=1, padding_mode=pad)
        self.output = OUTPUTS[output]()  # no parameters: checkpoints of either kind share their keys

    @staticmethod
    def _up_block(c_in: int, c_out: int, norm: str, act: str, mode: str, pad: str) -> nn.Sequential:
        if mode == "transposed":
            conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=norm == "none")
            return nn.Sequential(conv, _norm(norm, c_out), _act(act))
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="bilinear"), *conv_block(c_in, c_out, norm, act, pad)
        )

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) images in [0, 1] -> (N, C, H, W) reconstructions, in train and eval mode."""
        side = 2**self.depth
        if x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(f"input size {tuple(x.shape[-2:])} must be divisible by 2**depth = {side}")
        h = self.stem(x)
        encoded = []
        for down in self.down:
            h = down(h)
            encoded.append(h)  # encoded[i]: (N, widths[i+1], H / 2**(i+1), W / 2**(i+1))
        h = self.squeeze(self.bottleneck(h))
        skips_open = None  # (N, 1, 1, 1): 1 where the image's skips stay open; None: open for all
        if self.training and self.skip_dropout and self.used_skips:
            drawn = torch.rand(x.shape[0], 1, 1, 1, device=x.device)
            skips_open = (drawn >= self.skip_dropout).to(h.dtype)
        for level, up in enumerate(self.up):
            h = up(h)
            if level < self.used_skips:
                joined = self.skips[level](h, encoded[-level - 2])
                h = joined if skips_open is None else skips_open * joined + (1 - skips_open) * h
        return self.output(self.head(h))

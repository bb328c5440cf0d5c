"""zennit composites and canonizers for ConvAutoencoder, and the check that every layer has a rule.

Covered layers: Conv2d and ConvTranspose2d (any rule), BatchNorm2d directly after a conv (merged into it by
zennit's SequentialMergeBatchNorm), ReLU and LeakyReLU (relevance passes unchanged: both are positively
homogeneous), Identity, nearest/bilinear Upsample (z-rule: fixed positive weights), and the two non-sequential
blocks of `model.autoencoder`: the residual add of DilatedResidual and the gated skip (1 - g) * dec + g * enc,
both rewritten by `AutoencoderCanonizer` into a zennit `Sum` that splits relevance in proportion to each term.
The Sigmoid output of model.output=sigmoid passes relevance unchanged, as zennit's composites do for every
activation (monotone and elementwise: each output's relevance stays with its own pre-activation); where that
pre-activation is near 0 the head's rule divides by it, so float32 conserves relevance only to ~1e-3 there.
Anything else (GroupNorm, InstanceNorm2d, GELU, SiLU, unknown containers) raises UnsupportedLayerError.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, SequentialMergeBatchNorm
from zennit.composites import (
    EpsilonAlpha2Beta1Flat,
    EpsilonGammaBox,
    EpsilonPlusFlat,
    LayerMapComposite,
)
from zennit.core import Composite
from zennit.layer import Sum
from zennit.rules import Epsilon, Norm, Pass, ZPlus
from zennit.types import Activation, BatchNorm, Convolution

from anomaly_ae.model.autoencoder import ConvAutoencoder, DilatedResidual, GatedSkip

COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1_flat", "epsilon", "zplus")
_LEAVES = (
    nn.Conv2d,
    nn.ConvTranspose2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Identity,
    nn.Upsample,
)
_CONTAINERS = (nn.Sequential, nn.ModuleList, ConvAutoencoder, DilatedResidual, GatedSkip)
_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


class UnsupportedLayerError(ValueError):
    """A layer that no LRP rule here covers: its relevance would be silently wrong."""


def check_supported(model: nn.Module) -> None:
    """Raise UnsupportedLayerError unless every layer of `model` is covered (see the module docstring)."""
    hint = (
        "LRP covers Conv2d, ConvTranspose2d, BatchNorm2d after a conv, ReLU, LeakyReLU, Sigmoid, Identity "
        "and nearest/bilinear Upsample inside anomaly_ae.model.autoencoder.ConvAutoencoder (train with "
        "model.norm=batch or none and model.activation=relu or leaky_relu); explain=gradient, "
        "gradient_x_input and residual work for any model"
    )
    previous = None
    for name, module in model.named_modules():
        if isinstance(module, _CONTAINERS):
            continue
        where = f"layer {name or '<root>'} ({type(module).__name__})"
        if not isinstance(module, _LEAVES):
            raise UnsupportedLayerError(f"{where} has no LRP rule. {hint}")
        if isinstance(module, nn.Upsample) and module.mode not in ("nearest", "bilinear"):
            raise UnsupportedLayerError(f"{where} uses mode {module.mode!r}, which has no LRP rule. {hint}")
        # The canonizer merges a batch norm only into the conv right before it, in module order.
        if isinstance(module, nn.BatchNorm2d) and not isinstance(previous, _CONVS):
            raise UnsupportedLayerError(
                f"{where} does not follow a convolution, so it cannot be merged. {hint}"
            )
        previous = module


def scaled(x: Tensor, scale: Tensor) -> Tensor:
    """x * scale in the forward pass; backwards the relevance of the product goes to x unchanged."""
    # A fixed factor takes no relevance of its own, so the rescaled term passes its share through as is.
    return x + (x * scale - x).detach()


def _residual_forward(self: DilatedResidual, x: Tensor) -> Tensor:
    return self.explain_sum(torch.stack([x, self.block(x)], dim=-1))  # (..., 2) summed by a hooked Sum


def _skip_forward(self: GatedSkip, decoded: Tensor, encoded: Tensor) -> Tensor:
    gate = torch.sigmoid(self.logit)
    terms = [scaled(decoded, 1 - gate), scaled(encoded, gate)]
    return self.explain_sum(torch.stack(terms, dim=-1))


def _attributes(name: str, module: nn.Module) -> dict | None:
    if isinstance(module, DilatedResidual):
        return {"forward": _residual_forward.__get__(module), "explain_sum": Sum()}
    if isinstance(module, GatedSkip):
        return {"forward": _skip_forward.__get__(module), "explain_sum": Sum()}
    return None


class AutoencoderCanonizer(CompositeCanonizer):
    """Merge batch norms into the preceding convs; route residual adds and gated skips through a `Sum`."""

    def __init__(self) -> None:
        super().__init__((SequentialMergeBatchNorm(), AttributeCanonizer(_attributes)))


def build_composite(
    name: str, epsilon: float = 1e-6, stabilizer: float = 1e-6, gamma: float = 0.25
) -> Composite:
    """The zennit composite called `name` (one of COMPOSITES), with the canonizers ConvAutoencoder needs."""
    canonizers = [AutoencoderCanonizer()]
    # Shared by all: activations pass relevance, sums and upsampling split it by contribution (z-rule),
    # merged batch norms (now identities) pass it. zennit's own composites add the same base entries.
    base = [
        (Activation, Pass()),
        (Sum, Norm(stabilizer=stabilizer)),
        (nn.Upsample, Norm(stabilizer=stabilizer)),
        (BatchNorm, Pass()),
    ]
    if name == "epsilon_plus_flat":
        return EpsilonPlusFlat(epsilon=epsilon, stabilizer=stabilizer, layer_map=base, canonizers=canonizers)
    if name == "epsilon_alpha2_beta1_flat":
        return EpsilonAlpha2Beta1Flat(
            epsilon=epsilon, stabilizer=stabilizer, layer_map=base, canonizers=canonizers
        )
    if name == "epsilon_gamma_box":  # inputs are images in [0, 1]: the box of the zB rule
        return EpsilonGammaBox(
            low=0.0,
            high=1.0,
            epsilon=epsilon,
            gamma=gamma,
            stabilizer=stabilizer,
            layer_map=base,
            canonizers=canonizers,
        )
    if name == "epsilon":
        return LayerMapComposite(base + [(Convolution, Epsilon(epsilon=epsilon))], canonizers=canonizers)
    if name == "zplus":
        return LayerMapComposite(base + [(Convolution, ZPlus(stabilizer=stabilizer))], canonizers=canonizers)
    raise ValueError(f"explain.composite={name!r} is not one of {COMPOSITES}")

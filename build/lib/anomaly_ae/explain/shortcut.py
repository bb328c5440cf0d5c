"""Skip the ordinary backward of the layers that an LRP rule explains: zennit computes it, then discards it.

A zennit rule hook replaces the gradient at a layer's input by the layer's relevance, which the rule computes
from its own re-run of the layer. Autograd still runs the layer's ordinary backward first (input and weight
gradients), only for the hook to throw the result away: one convolution backward per conv, a sixth to a
fifth of an explanation's time (experiments/README.md, "Explanation cost"). `skip_own_backward` cuts that
path: each such layer's output is re-attached to its (hooked) input by a function whose backward is a zero
tensor, so autograd reaches zennit's input hook at once.
Only for layer types that every composite of `anomaly_ae.explain.rules` gives a rule that ignores the
ordinary gradient: convolutions and upsampling (their rules recompute the layer), batch norms and
activations (Pass: the relevance goes through as it came).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

SKIPPED = (nn.Conv2d, nn.ConvTranspose2d, nn.Upsample, nn.BatchNorm2d, nn.ReLU, nn.LeakyReLU, nn.Sigmoid)


class _Reattach(torch.autograd.Function):
    """Forward: the (detached) layer output; backward: zeros for the layer input, for a hook to replace."""

    @staticmethod
    def forward(ctx, layer_input: Tensor, layer_output: Tensor) -> Tensor:
        ctx.like = (layer_input.shape, layer_input.dtype, layer_input.device)
        return layer_output.view_as(layer_output)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor, None]:
        shape, dtype, device = ctx.like
        return torch.zeros(shape, dtype=dtype, device=device), None


def _reattach(module: nn.Module, args: tuple, output: Tensor) -> Tensor | None:
    if not (torch.is_grad_enabled() and args[0].requires_grad):
        return None
    return _Reattach.apply(args[0], output.detach())


@contextmanager
def skip_own_backward(model: nn.Module) -> Iterator[None]:
    """Within the context, the SKIPPED layers of `model` pass no ordinary gradient.

    Enter it *before* the composite's context, so the re-attached output is the one zennit's hooks see.
    """
    handles = [m.register_forward_hook(_reattach) for m in model.modules() if isinstance(m, SKIPPED)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()

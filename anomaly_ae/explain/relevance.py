"""Relevance of an anomaly score (of the image, or of a region) with respect to the input pixels.

How relevance passes the score (the choice is `Method.residual`, a config value):
- The map is m = mean_c r^2 with r = x - f(x), smoothed by a fixed Gaussian conv (linear, positive weights),
  and reduced by max / top-k mean / mean. The max and the top-k are winner-take-all gates: once the selected
  pixels are fixed the score is linear in m, s = sum_q w_q m_q (w: the kernel around the winners).
- The square is a gated linear term: r * r with one factor held constant, so s = sum a * r exactly, with
  a = w * r / C. The weights `a` come from autograd (s is 2-homogeneous in r, so a = ds/dr / 2), which keeps
  the scoring code in one place (`anomaly_ae.model.scorer`) and conserves s exactly.
- "gated": the difference x - f(x) is an LRP sum node with terms a*x and -a*f(x), each keeping its own value
  as relevance (LRP-0). a*x goes straight to the pixels; -a*f(x) enters the autoencoder's output and is
  propagated by the zennit composite. Total relevance = s when no bias absorbs any; with LRP-eps it equals
  half of gradient x input (the 2 of the square). Reference point 0 (black), as in gradient x input.
- "root": a deep-Taylor expansion of r at the root point f(x), the nearest normal image (docs/method.md). Its
  first-order terms through f vanish for an ideal projection (the residual is orthogonal to the manifold of
  normal images), leaving relevance a * r: each pixel's own non-negative share of the score, in the spirit of
  the distance layer of Kauffmann, Mueller and Montavon (Pattern Recognition 2020). Nothing is propagated
  through f, so the composite does not matter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from anomaly_ae.explain.rules import COMPOSITES, build_composite, check_supported
from anomaly_ae.explain.shortcut import skip_own_backward
from anomaly_ae.model.scorer import AnomalyScorer
from anomaly_ae.model.scoring import COMPONENTS, image_score

KINDS = ("lrp", "gradient", "gradient_x_input", "residual")
# score.residual values that are quadratic forms of x - f(x) (squared differences of linear maps of it), so
# that s = sum a * r holds exactly; the gradient residual compares edge strengths of x and f(x) separately.
QUADRATIC_RESIDUALS = ("squared", "multiscale")
RESIDUAL_RULES = ("gated", "root")
POOLINGS = ("sum", "l2")


@dataclass(frozen=True)
class Method:
    """One explanation method; the fields are the keys of conf/explain/*.yaml."""

    name: str
    kind: str = "lrp"  # lrp, gradient, gradient_x_input, residual
    composite: str | None = None  # zennit composite for kind=lrp with residual=gated (rules.COMPOSITES)
    residual: str = "gated"  # how relevance passes x - f(x) and the square (module docstring)
    pooling: str = "sum"  # channels -> one heat map: signed sum, or l2 norm (for plain gradients)
    epsilon: float = 1e-6
    stabilizer: float = 1e-6
    gamma: float = 0.25

    def __post_init__(self) -> None:
        for key, value, allowed in (
            ("kind", self.kind, KINDS),
            ("residual", self.residual, RESIDUAL_RULES),
            ("pooling", self.pooling, POOLINGS),
        ):
            if value not in allowed:
                raise ValueError(f"explain.{key}={value!r} is not one of {allowed} (method {self.name})")
        if self.kind == "lrp" and self.residual == "gated" and self.composite not in COMPOSITES:
            raise ValueError(f"explain.composite={self.composite!r} is not one of {COMPOSITES}")

    @classmethod
    def from_config(cls, cfg: Mapping) -> Method:
        """Build from a config mapping; unknown keys are an error, not silently ignored."""
        unknown = set(cfg) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(
                f"unknown explain keys {sorted(unknown)}; known: {[f.name for f in fields(cls)]}"
            )
        return cls(**dict(cfg))


@dataclass
class Explanation:
    """relevance (N, C, H, W), heatmap (N, H, W) pooled over channels, maps (N, H, W), scores (N,)."""

    relevance: Tensor
    heatmap: Tensor
    maps: Tensor
    scores: Tensor


def region_score(maps: Tensor, region: Tensor | None, reduction: str, topk: int) -> Tensor:
    """Reduce (N, H, W) maps to (N,) scores over the pixels where `region` (N, [1,] H, W) is non-zero."""
    if region is None:
        return image_score(maps, reduction, topk)
    inside = region.reshape(maps.shape).bool()
    if not inside.flatten(1).any(1).all():
        raise ValueError("explain.region is empty for at least one image")
    # Per image: regions hold different pixel counts, and top-k needs k <= count.
    return torch.cat([image_score(m[r][None], reduction, topk) for m, r in zip(maps, inside, strict=True)])


def box_mask(box: tuple[int, int, int, int], shape: tuple[int, int]) -> Tensor:
    """(top, left, bottom, right) in pixels, bottom/right exclusive -> (1, H, W) bool mask."""
    top, left, bottom, right = box
    mask = torch.zeros(1, *shape, dtype=torch.bool)
    mask[:, top:bottom, left:right] = True
    if not mask.any():
        raise ValueError(f"box {box} holds no pixel of a {shape} image")
    return mask


def scorer_score(scorer: AnomalyScorer, images: Tensor, recon: Tensor, region: Tensor | None) -> Tensor:
    """(N,) scores of the whole image, or of `region`, exactly as the scorer computes them."""
    return region_score(scorer.anomaly_map(images, recon), region, scorer.reduction, scorer.topk)


def lrp_scorer(scorer: AnomalyScorer) -> AnomalyScorer:
    """The scorer whose score LRP explains: `scorer` itself when its residual is quadratic in x - f(x).

    For a residual of components (score.residual=squared_and_gradient) it is the same autoencoder scored
    with the quadratic component alone, z-scored on that component's own clean statistics: the gradient
    distance has no exact form sum a * r, and the squared term is the part that LRP can conserve.
    """
    kind = scorer.residual_kind
    quadratic = [part for part in COMPONENTS.get(kind, ()) if part in QUADRATIC_RESIDUALS]
    if kind in QUADRATIC_RESIDUALS or not quadratic:
        return scorer  # a non-quadratic residual is refused by `residual_weights`
    index, size = COMPONENTS[kind].index(quadratic[0]), scorer.residual_mean.shape[-1]
    part = AnomalyScorer(scorer.autoencoder, scorer.sigma, scorer.reduction, scorer.topk, size, "pixel",
                         scorer.flip_average, quadratic[0])  # fmt: skip
    part = part.to(scorer.residual_mean.device)
    part.fit_statistics(scorer.residual_mean[index], scorer.residual_std[index])
    return part


def residual_weights(scorer: AnomalyScorer, images: Tensor, recon: Tensor, region: Tensor | None) -> tuple:
    """(scores (N,), a (N, C, H, W)) with scores == sum(a * (images - recon)) per image."""
    if scorer.residual_kind not in QUADRATIC_RESIDUALS:
        raise ValueError(
            f"LRP (kind=lrp, residual=root) needs a score that is a quadratic form of x - f(x), "
            f"score.residual in {QUADRATIC_RESIDUALS}; this model scores with score.residual="
            f"{scorer.residual_kind}: use explain=gradient or explain=gradient_x_input"
        )
    recon = recon.detach().requires_grad_()
    with torch.enable_grad():
        scores = scorer_score(scorer, images.detach(), recon, region)
        (grad,) = torch.autograd.grad(scores.sum(), recon)
    return scores.detach(), -grad / 2  # ds/dr = -ds/drecon = 2a


def propagate(
    autoencoder: nn.Module, images: Tensor, composite, output_relevance, shortcut: bool = True
) -> tuple[Tensor, Tensor]:
    """LRP through the autoencoder: (reconstructions, input relevance) for relevance given at its output.

    `output_relevance` maps the (detached) reconstructions to the relevance of each output value.
    `shortcut`: skip the layers' ordinary backward, which zennit discards (same result, less time).
    """
    check_supported(autoencoder)
    x = images.detach().requires_grad_()
    skipping = skip_own_backward(autoencoder) if shortcut else contextlib.nullcontext()
    with torch.enable_grad(), skipping, composite.context(autoencoder):
        recon = autoencoder(x)
        relevance = output_relevance(recon.detach())
        (result,) = torch.autograd.grad(recon, x, grad_outputs=relevance)
    return recon.detach(), result


def _gated(
    scorer: AnomalyScorer, images: Tensor, method: Method, region: Tensor | None, shortcut: bool
) -> tuple:
    composite = build_composite(method.composite, method.epsilon, method.stabilizer, method.gamma)
    found = {}

    def output_relevance(recon: Tensor) -> Tensor:
        found["scores"], found["a"] = residual_weights(scorer, images, recon, region)
        return -found["a"] * recon  # the term -a * f(x) of the linearised score

    recon, from_recon = propagate(scorer.autoencoder, images, composite, output_relevance, shortcut)
    return recon, found["scores"], found["a"] * images + from_recon  # + the direct term a * x


def _root(scorer: AnomalyScorer, images: Tensor, region: Tensor | None) -> tuple:
    with torch.no_grad():
        recon = scorer.autoencoder(images)
    scores, a = residual_weights(scorer, images, recon, region)
    return recon, scores, a * (images - recon)


def _gradient(scorer: AnomalyScorer, images: Tensor, region: Tensor | None, times_input: bool) -> tuple:
    x = images.detach().requires_grad_()
    with torch.enable_grad():
        recon = scorer.autoencoder(x)
        scores = scorer_score(scorer, x, recon, region)
        (grad,) = torch.autograd.grad(scores.sum(), x)
    return recon.detach(), scores.detach(), grad * images if times_input else grad


def _residual(scorer: AnomalyScorer, images: Tensor, region: Tensor | None) -> tuple:
    with torch.no_grad():
        recon = scorer.autoencoder(images)
        scores = scorer_score(scorer, images, recon, region)
    # Spread evenly over the channels, so the channel sum is the anomaly map itself.
    return recon, scores, scorer.anomaly_map(images, recon)[:, None].expand_as(images) / images.shape[1]


def explain(
    scorer: AnomalyScorer, images: Tensor, method: Method, region: Tensor | None = None, shortcut: bool = True
) -> Explanation:
    """Explain the scores of a batch of (N, C, H, W) images in [0, 1] with `method`.

    `shortcut=False` lets autograd run the layers' own backward that zennit discards (for comparisons).
    """
    images = images.detach()
    scorer.eval()  # batch norm must use its running statistics
    shown, scorer = scorer, lrp_scorer(scorer) if method.kind == "lrp" else scorer
    if method.kind == "lrp":
        if method.residual == "gated":
            recon, scores, relevance = _gated(scorer, images, method, region, shortcut)
        else:
            recon, scores, relevance = _root(scorer, images, region)
    elif method.kind == "residual":
        recon, scores, relevance = _residual(scorer, images, region)
    else:
        recon, scores, relevance = _gradient(scorer, images, region, method.kind == "gradient_x_input")
    heatmap = relevance.sum(1) if method.pooling == "sum" else relevance.norm(dim=1)
    with torch.no_grad():
        maps = shown.anomaly_map(images, recon)  # the model's own map, whatever part LRP explained
    return Explanation(relevance.detach(), heatmap.detach(), maps, scores)

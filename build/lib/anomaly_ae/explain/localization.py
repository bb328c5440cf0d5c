"""How well heat maps point at ground-truth defects: relevance mass accuracy, rank accuracy, pointing game.

Mass and rank accuracy follow Arras et al., "CLEVR-XAI" (Information Fusion 2022); the pointing game follows
Zhang et al., "Top-down neural attention by excitation backprop" (ECCV 2016). Ties are scored by their
expected value under random tie-breaking, so a flat map scores the mask's area share, not an index artefact.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def mass_accuracy(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Share of the positive relevance inside the mask; (N, H, W) x2 -> (N,), 0 without positive relevance."""
    positive = heatmaps.float().clamp_min(0).flatten(1)
    inside = (positive * masks.flatten(1).float()).sum(1)
    total = positive.sum(1)
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)


def rank_accuracy(heatmaps: Tensor, masks: Tensor) -> Tensor:
    """Share of the K highest-relevance pixels inside the mask, K = mask area; (N, H, W) x2 -> (N,)."""
    scores = []
    for heat, mask in zip(heatmaps.float().flatten(1), masks.bool().flatten(1), strict=True):
        k = int(mask.sum())
        if k == 0:
            raise ValueError("rank accuracy needs a non-empty mask")
        threshold = heat.topk(k).values[-1]
        above, tied = heat > threshold, heat == threshold
        # Of the tied pixels only k - |above| make the top k; each tied pixel is equally likely to.
        hits = (above & mask).sum() + (k - above.sum()) * (tied & mask).sum() / tied.sum()
        scores.append(hits / k)
    return torch.stack(scores)


def pointing_game(heatmaps: Tensor, masks: Tensor, tolerance: int = 0) -> Tensor:
    """1 where the maximum falls inside the mask grown by `tolerance` px (square), else 0; ties averaged."""
    masks = masks.float()
    if tolerance > 0:
        masks = F.max_pool2d(masks[:, None], 2 * tolerance + 1, stride=1, padding=tolerance)[:, 0]
    heat = heatmaps.float().flatten(1)
    at_max = heat == heat.amax(1, keepdim=True)
    return (at_max & masks.flatten(1).bool()).sum(1) / at_max.sum(1)


METRICS = {"mass_accuracy": mass_accuracy, "rank_accuracy": rank_accuracy, "pointing_game": pointing_game}

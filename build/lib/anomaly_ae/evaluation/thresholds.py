"""Decision thresholds fitted on the validation split only, never on test data."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics.utilities import dim_zero_cat

from anomaly_ae.evaluation.metrics import ImageMetrics, PixelMetrics, f1_max


def fit_image_threshold(scores: Tensor, corrupted: Tensor, method: str, quantile: float) -> tuple[float, str]:
    """Image threshold from validation scores; `corrupted` says which images carry pseudo-defects.

    method "f1": the F1-optimal threshold for telling pseudo-defective from clean validation images;
    falls back to the quantile rule when validation has no pseudo-defects or no clean image.
    method "quantile": the `quantile` of the clean validation images' scores.
    """
    clean = scores[~corrupted]
    if method == "f1" and corrupted.any() and (~corrupted).any():
        return f1_max(scores, corrupted.long())[1], "f1 on validation pseudo-defects"
    if not len(clean):
        return math.nan, "none: validation has no clean image"
    reason = "" if method == "quantile" else " (fallback: validation has no pseudo-defects)"
    return float(torch.quantile(clean.double(), quantile)), f"quantile {quantile} of clean validation{reason}"


def f1_and_iou(counts: Tensor) -> tuple[float, float]:
    """F1 and intersection-over-union from (tp, fp, fn); NaN where undefined."""
    tp, fp, fn = counts.tolist()
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    iou = tp / (tp + fp + fn) if tp + fp + fn else math.nan
    return f1, iou


def pixel_operating_points(metric: PixelMetrics) -> dict[str, Tensor]:
    """Descending thresholds with the false and true positive counts of `maps >= threshold` (binned metric).

    Each used bin's lowest score is an exact threshold: it keeps that bin and all higher bins.
    Reads the states synced over DDP ranks.
    """
    if metric.num_bins is None:
        raise ValueError("pixel thresholds need a binned PixelMetrics (num_bins set)")
    with metric.sync_context():
        pixels, anomalous, low = metric.pixels.cpu(), metric.anomalous.cpu(), metric.low.cpu()
    normal = pixels - anomalous
    used = (normal + anomalous) > 0
    return {
        "threshold": low[used].flip(0),
        "fp": normal[used].flip(0).cumsum(0),
        "tp": anomalous[used].flip(0).cumsum(0),
    }


def fit_pixel_threshold(metric: PixelMetrics, method: str, quantile: float) -> tuple[float, str]:
    """Pixel threshold from validation: F1-optimal on pseudo-defects, or a quantile of normal pixels."""
    points = pixel_operating_points(metric)
    if not len(points["threshold"]):
        return math.nan, "none: no validation pixels"
    tp, fp = points["tp"], points["fp"]
    if method == "f1" and tp[-1] > 0 and fp[-1] > 0:
        f1 = 2 * tp / (tp + fp + tp[-1])
        return float(points["threshold"][int(f1.argmax())]), "f1 on validation pseudo-defects"
    # Lowest threshold whose false-positive rate on normal pixels stays within 1 - quantile.
    within = (fp <= (1 - quantile) * fp[-1] + 1e-6).nonzero()  # counts, not rates: no rounding at the edge
    index = int(within[-1]) if len(within) else 0
    reason = "" if method == "quantile" else " (fallback: validation has no pseudo-defects)"
    return float(points["threshold"][index]), f"quantile {quantile} of normal validation pixels{reason}"


def fit_thresholds(
    image: ImageMetrics, pixel: PixelMetrics, method: str, quantile: float
) -> tuple[float, float, dict[str, str]]:
    """(image threshold, pixel threshold, how each was fitted) from a validation epoch's metric states.

    `image` holds validation scores labelled by whether the image carries a pseudo-defect; `pixel` the
    pseudo-defect masks. Reads every DDP rank's states (ranks may hold different counts).
    """
    with image.sync_context():
        scores, flags = dim_zero_cat(image.scores), dim_zero_cat(image.labels).bool()
    image_threshold, image_source = fit_image_threshold(scores, flags, method, quantile)
    pixel_threshold, pixel_source = fit_pixel_threshold(pixel, method, quantile)
    return image_threshold, pixel_threshold, {"image": image_source, "pixel": pixel_source}

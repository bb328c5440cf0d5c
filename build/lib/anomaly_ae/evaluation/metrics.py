"""Image- and pixel-level anomaly-detection metrics: AUROC, AP, F1-max and AUPRO (MVTec AD definition)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc, binary_average_precision
from torchmetrics.utilities import dim_zero_cat

# 8-connectivity, as in the MVTec AD evaluation code (`structure = np.ones((3, 3))` before
# scipy.ndimage.label in its generic_util.py). Only the middle plane is set, so regions never join
# across the images of a batch, which is labelled in one call.
_REGION_STRUCTURE = np.zeros((3, 3, 3), dtype=bool)
_REGION_STRUCTURE[1] = True

# Pixels per update chunk (16 maps at 256^2, one at 1024^2): bounds the ~25 bytes per pixel of
# temporaries (~25 MB) whatever the map size and batch; bigger temporaries only fragment the heap more.
_CHUNK_PIXELS = 2**20

# Binned scores: float32 bit patterns of |x| from 2**-32 (biased exponent 127 - 32) over 64 octaves.
_LOW_BITS, _SPAN = (127 - 32) << 23, 64 << 23

# compute() warns when binning may move pixel AUROC or AUPRO by more than this.
BINNING_TOLERANCE = 1e-3


def _dense_ranks(scores: Tensor) -> tuple[Tensor, Tensor]:
    """Order- and tie-preserving map of raw scores onto [0, 1], plus the sorted unique scores."""
    # torchmetrics' curve functions apply a sigmoid to scores outside [0, 1], which merges distinct raw
    # scores (in float32 sigmoid(20) == sigmoid(30) == 1.0); dense ranks keep every order and tie exact.
    unique, inverse = torch.unique(scores, sorted=True, return_inverse=True)
    return inverse.double() / max(len(unique) - 1, 1), unique


def _one_class(n_pos: int, n_neg: int, level: str) -> bool:
    """Warn and return True when AUROC/AP are undefined because one class is missing."""
    if n_pos > 0 and n_neg > 0:
        return False
    missing = "anomalous" if n_pos == 0 else "normal"
    warnings.warn(
        f"{level} metrics: no {missing} samples, so AUROC and AP are undefined and returned as NaN.",
        UserWarning,
        stacklevel=3,
    )
    return True


def f1_max(scores: Tensor, labels: Tensor) -> tuple[float, float]:
    """Best F1 over all rules `score >= t` and that t, exact; (NaN, NaN) without anomalous samples."""
    # By hand: torchmetrics' PR curve sigmoids raw scores and returns float32 precision and recall.
    scores = torch.as_tensor(scores).detach().flatten().cpu().double()
    labels = torch.as_tensor(labels).detach().flatten().cpu().bool()
    n_pos = int(labels.sum())
    if n_pos == 0:
        return math.nan, math.nan
    scores, order = torch.sort(scores, descending=True)
    tp = torch.cumsum(labels[order], 0).double()
    fp = torch.arange(1, len(scores) + 1, dtype=torch.float64) - tp
    last = torch.ones_like(labels)  # last position of each run of tied scores: one threshold per run
    last[:-1] = scores[1:] != scores[:-1]
    f1 = 2 * tp[last] / (tp[last] + fp[last] + n_pos)  # = 2PR / (P + R), defined for every threshold
    best = int(f1.argmax())
    return float(f1[best]), float(scores[last][best])


class ImageMetrics(Metric):
    """Exact image-level AUROC, average precision and F1-max on raw scores."""

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # One score per image is small enough to keep exactly (1,725 MVTec AD test images).
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("labels", default=[], dist_reduce_fx="cat")

    def update(self, scores: Tensor, labels: Tensor) -> None:
        """Add (N,) raw image scores and (N,) labels (1 / True = anomalous)."""
        if scores.shape != labels.shape or scores.ndim != 1:
            raise ValueError(f"expected scores and labels of shape (N,), got {scores.shape}, {labels.shape}")
        self.scores.append(scores.detach().double())
        self.labels.append(labels.detach().long())

    def compute(self) -> dict[str, Tensor]:
        """image_auroc, image_ap, image_f1_max, image_f1_threshold (NaN where undefined)."""
        scores, labels = dim_zero_cat(self.scores).cpu(), dim_zero_cat(self.labels).cpu()
        n_pos = int(labels.sum())
        auroc = ap = math.nan
        if not _one_class(n_pos, len(labels) - n_pos, "image"):
            ranks, _ = _dense_ranks(scores)
            auroc, ap = float(binary_auroc(ranks, labels)), float(binary_average_precision(ranks, labels))
        f1, threshold = f1_max(scores, labels)
        values = {"image_auroc": auroc, "image_ap": ap, "image_f1_max": f1, "image_f1_threshold": threshold}
        return {k: torch.tensor(v, dtype=torch.float32, device=self.device) for k, v in values.items()}


def _order_keys(maps: Tensor) -> Tensor:
    """int64 keys in [0, 2**32) whose order is the order of the float32 values of `maps`."""
    bits = (maps.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    # IEEE-754 floats order like sign-magnitude integers: flipping the magnitude bits of negatives makes
    # them order like two's complement ints; the offset then maps int32 onto [0, 2**32).
    return (bits ^ ((bits >> 31) & 0x7FFFFFFF)).long() + 2**31


def _bin_keys(maps: Tensor, num_bins: int) -> Tensor:
    """Log-spaced bin of each score: |x| in [2**-32, 2**32) gets num_bins / 128 bins per octave and sign."""
    # Clamping the magnitude spends every bin on 64 octaves (tinier and huger scores share the edge bins)
    # rather than on the 256 octaves of float32: 4x finer relative resolution for the same memory.
    x = maps.float() + 0.0  # a copy to work on in place; + 0.0 also turns -0.0 into +0.0
    sign = x.view(torch.int32) >> 31  # -1 for negative scores, else 0
    offset = x.abs_().clamp_(2.0**-32, 2.0**32 * (1 - 2**-24)).view(torch.int32).sub_(_LOW_BITS)
    # offset in [0, _SPAN) is ordered like |x|; xor with -1 gives -1 - offset, mirroring negatives below 0.
    keys = offset.bitwise_xor_(sign).add_(_SPAN)  # [0, 2**30)
    return keys.bitwise_right_shift_(30 - int(math.log2(num_bins))).long()


def _area(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under y(x) over [0, x_max] for non-decreasing x from 0, interpolating y at x_max."""
    end = int(np.searchsorted(x, x_max, side="right"))  # x[:end] <= x_max < x[end]
    if end < len(x):
        y_max = y[end - 1] + (y[end] - y[end - 1]) * (x_max - x[end - 1]) / (x[end] - x[end - 1])
        x, y = np.append(x[:end], x_max), np.append(y[:end], y_max)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))


class PixelMetrics(Metric):
    """Pixel AUROC, AP, F1-max and AUPRO up to FPR `max_fpr` (default 0.3), streamed.

    Binning: a pixel goes to the log-spaced bin of its float32 score, read off the score's bit pattern:
    num_bins / 128 bins per octave of |x| in [2**-32, 2**32), mirrored for negative scores, so a bin is at
    most 2**7 / num_bins of its score wide (1.2e-4 relative for the default 2**20; 32 MB of state).
    The bins need no score range, which is unknown before the first update (and the first batch may hold
    only normal images); they put resolution near 0, where residual maps live; and they are identical on
    every DDP rank, so all states reduce by sum (min / max). Per bin: all pixels, anomalous pixels, and
    anomalous pixels weighted by 1 / (size of their region), whose suffix sum over bins divided by the number
    of regions is the PRO at that bin's lower edge.

    Error: bin edges are exact thresholds, so the binned curves pass through exact curve points, and between
    two of them the exact curve stays inside the box they span. Hence |binned - exact| <= sum(dFPR * dTPR)
    / 2 for AUROC, likewise for AUPRO; compute() stores this bound in `binning_error_bound`, skipping bins
    whose pixels all share one score (exact ties), and warns above BINNING_TOLERANCE (1e-3), e.g. for scores
    with a large common offset, whose spread then covers few relative bins.
    num_bins=None is exact (on float32 scores): it keeps every distinct score and its counts; small sets only.

    Regions are 8-connected (as the MVTec AD evaluation code), labelled per image. FPR counts normal pixels
    of all images. AUPRO is NaN without regions or without normal pixels; AUROC and AP are NaN when one
    class is missing. Call update() rather than forward(): forward() would also compute per batch.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, max_fpr: float = 0.3, num_bins: int | None = 2**20, **kwargs) -> None:
        super().__init__(**kwargs)
        if not 0 < max_fpr <= 1:
            raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
        if num_bins is not None and (num_bins < 2**8 or num_bins > 2**30 or num_bins & (num_bins - 1)):
            raise ValueError(f"num_bins must be None or a power of two in [2**8, 2**30], got {num_bins}")
        self.max_fpr, self.num_bins = max_fpr, num_bins
        self.binning_error_bound: dict[str, float] = {}
        if num_bins is None:
            self.add_state("keys", default=[], dist_reduce_fx="cat")
            for name in ("pixels", "anomalous", "overlap"):
                self.add_state(name, default=[], dist_reduce_fx="cat")
        else:
            for name in ("pixels", "anomalous", "overlap"):
                self.add_state(name, default=torch.zeros(num_bins, dtype=torch.float64), dist_reduce_fx="sum")
            # Per-bin score range: a bin whose pixels all share one score is exact and adds no error bound.
            self.add_state("low", default=torch.full((num_bins,), math.inf), dist_reduce_fx="min")
            self.add_state("high", default=torch.full((num_bins,), -math.inf), dist_reduce_fx="max")
        self.add_state("regions", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, anomaly_maps: Tensor, masks: Tensor) -> None:
        """Add (N, H, W) anomaly maps and (N, H, W) ground-truth masks; H, W may change between calls."""
        if anomaly_maps.shape != masks.shape or anomaly_maps.ndim != 3:
            raise ValueError(f"expected maps and masks of equal shape (N, H, W), got {anomaly_maps.shape}")
        if bool(anomaly_maps.isnan().any()):
            raise ValueError("anomaly maps contain NaN")
        masks = masks.detach().cpu().bool()  # scipy labels regions on the CPU
        step = max(1, _CHUNK_PIXELS // max(1, masks.shape[1] * masks.shape[2]))
        for start in range(0, len(masks), step):
            self._update_chunk(anomaly_maps[start : start + step].detach(), masks[start : start + step])

    def _update_chunk(self, maps: Tensor, masks: Tensor) -> None:
        """Accumulate one chunk of images into the states, in place (no per-update histograms)."""
        regions, n_regions = ndimage.label(masks.numpy(), structure=_REGION_STRUCTURE)
        regions = torch.from_numpy(regions).flatten()  # (n*H*W,) int32, 0 = normal pixel
        anomalous = regions.nonzero().squeeze(1)  # indices of the (few) anomalous pixels
        regions = regions[anomalous]
        overlap = 1.0 / torch.bincount(regions).double()[regions]  # 1 / size of the pixel's region
        anomalous, overlap = anomalous.to(self.device), overlap.to(self.device)
        scores = maps.flatten().float().to(self.device)
        # Stride 0: counting every pixel needs no ones tensor of the chunk's size.
        ones = torch.ones(1, dtype=torch.float64, device=self.device).expand(len(scores))
        if self.num_bins is None:
            unique, keys = torch.unique(_order_keys(scores), return_inverse=True)
            self.keys.append(unique)
            targets = [torch.zeros(len(unique), dtype=torch.float64, device=self.device) for _ in range(3)]
        else:
            keys = _bin_keys(scores, self.num_bins)
            targets = [self.pixels, self.anomalous, self.overlap]
            self.low.scatter_reduce_(0, keys, scores, "amin")
            self.high.scatter_reduce_(0, keys, scores, "amax")
        # Counting all pixels, then only the few anomalous ones, keeps temporaries at ~25 bytes per pixel.
        # float64 counts are exact up to 2**53 pixels; index_add_ is deterministic on CUDA in deterministic
        # mode, where a weighted bincount would raise.
        anomalous_keys = keys[anomalous]
        targets[0].index_add_(0, keys, ones)
        targets[1].index_add_(0, anomalous_keys, ones[: len(anomalous_keys)])
        targets[2].index_add_(0, anomalous_keys, overlap)
        if self.num_bins is None:
            for name, target in zip(("pixels", "anomalous", "overlap"), targets, strict=True):
                getattr(self, name).append(target)
        self.regions += n_regions

    def _counts(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Per-bin normal, anomalous, overlap counts in ascending score order, and a per-bin 'exact' flag."""
        states = (self.pixels, self.anomalous, self.overlap)
        if self.num_bins is not None:
            pixels, anomalous, overlap = (s.cpu().numpy() for s in states)
            exact = (self.low == self.high).cpu().numpy()
        else:
            # Exact mode: merge the per-update unique keys (and, under DDP, the ranks') into one sorted set.
            unique, inverse = torch.unique(dim_zero_cat(self.keys).cpu(), return_inverse=True)
            pixels, anomalous, overlap = (
                torch.zeros(len(unique), dtype=torch.float64)
                .index_add_(0, inverse, dim_zero_cat(s).cpu())
                .numpy()
                for s in states
            )
            exact = np.ones(len(unique), dtype=bool)
        return pixels - anomalous, anomalous, overlap, exact

    def compute(self) -> dict[str, Tensor]:
        """pixel_auroc, pixel_ap, pixel_f1_max, pixel_aupro (NaN where undefined)."""
        normal, anomalous, overlap, exact = self._counts()
        self.binning_error_bound = {}
        used = normal + anomalous > 0
        # Thresholds from the highest bin down: point i counts the pixels of the i highest used bins.
        fp, tp, pro = (np.cumsum(c[used][::-1]) for c in (normal, anomalous, overlap))
        exact = exact[used][::-1]
        n_neg, n_pos, n_regions = fp[-1], tp[-1], int(self.regions)
        auroc = ap = f1 = aupro = math.nan
        fpr, tpr = np.append(0.0, fp / max(n_neg, 1)), np.append(0.0, tp / max(n_pos, 1))
        if not _one_class(n_pos, n_neg, "pixel"):
            auroc = _area(fpr, tpr, 1.0)
            ap = float(np.sum(np.diff(tpr) * tp / (tp + fp)))  # recall gain times precision, step-wise
        if n_pos > 0:
            f1 = float(np.max(2 * tp / (tp + fp + n_pos)))
        if n_regions > 0 and n_neg > 0:
            pro_curve = np.append(0.0, pro / n_regions)
            aupro = _area(fpr, pro_curve, self.max_fpr) / self.max_fpr
            self._check_binning(fpr, tpr, pro_curve, exact)
        values = {"pixel_auroc": auroc, "pixel_ap": ap, "pixel_f1_max": f1, "pixel_aupro": aupro}
        return {k: torch.tensor(v, dtype=torch.float32, device=self.device) for k, v in values.items()}

    def _check_binning(self, fpr: np.ndarray, tpr: np.ndarray, pro: np.ndarray, exact: np.ndarray) -> None:
        """Bound how far binning can move AUROC and AUPRO from their exact values; warn if too far."""
        d_fpr = np.where(exact, 0.0, np.diff(fpr))  # a bin holding one distinct score is an exact step
        roc_box, pro_box = d_fpr * np.diff(tpr), d_fpr * np.diff(pro)
        below = fpr[:-1] < self.max_fpr
        # The segment that crosses max_fpr is interpolated, so it may be off by its whole box.
        crossing = pro_box[below][-1] if below.any() else 0.0
        self.binning_error_bound = {
            "pixel_auroc": float(roc_box.sum() / 2),
            "pixel_aupro": float((pro_box[below].sum() / 2 + crossing / 2) / self.max_fpr),
        }
        worst = max(self.binning_error_bound.values())
        if self.num_bins is not None and worst > BINNING_TOLERANCE:
            warnings.warn(
                f"pixel metrics: binning may shift AUROC/AUPRO by up to {worst:.2g} (> {BINNING_TOLERANCE}), "
                "e.g. scores with a large common offset; use more num_bins, or num_bins=None (exact).",
                UserWarning,
                stacklevel=2,
            )

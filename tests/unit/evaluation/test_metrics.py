"""Metrics against slow, obviously-correct numpy references that enumerate every threshold."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from skimage.measure import label as skimage_label

from anomaly_ae.evaluation.metrics import ImageMetrics, PixelMetrics, f1_max

MODES = {"exact": None, "binned": 2**20}


# --- references: thresholds are the sorted unique scores, a pixel is positive when score >= t ---------------


def ref_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann-Whitney: fraction of (anomalous, normal) pairs ranked right, ties count 1/2."""
    pos, neg = scores[labels == 1][:, None], scores[labels == 0][None, :]  # every pair, by broadcasting
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def ref_counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp) for every threshold t in the unique scores, descending."""
    thresholds = np.unique(scores)[::-1]
    tp = np.array([np.sum((scores >= t) & (labels == 1)) for t in thresholds], dtype=float)
    fp = np.array([np.sum((scores >= t) & (labels == 0)) for t in thresholds], dtype=float)
    return tp, fp


def ref_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """AP = sum_k (R_k - R_{k-1}) P_k over descending thresholds, R_0 = 0."""
    tp, fp = ref_counts(scores, labels)
    recall = np.append(0.0, tp / labels.sum())
    return float(sum((recall[k + 1] - recall[k]) * tp[k] / (tp[k] + fp[k]) for k in range(len(tp))))


def ref_f1_max(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Best F1 = 2 tp / (2 tp + fp + fn) over every threshold, and that threshold."""
    best = (-1.0, math.nan)
    for t in np.unique(scores)[::-1]:
        pred = scores >= t
        tp, fp, fn = np.sum(pred & (labels == 1)), np.sum(pred & (labels == 0)), np.sum(~pred & (labels == 1))
        f1 = 2 * tp / (2 * tp + fp + fn)
        best = max(best, (f1, t), key=lambda b: b[0])  # on equal F1 the highest t stays, as in f1_max
    return best


def ref_aupro(maps: list[np.ndarray], masks: list[np.ndarray], max_fpr: float = 0.3) -> float:
    """MVTec AD AUPRO: 8-connected regions (skimage), PRO(FPR) at every threshold, trapezoid to max_fpr."""
    regions, normal = [], []
    for m, g in zip(maps, masks, strict=True):
        lab = skimage_label(g.astype(bool), connectivity=2)  # connectivity=2: 8-neighbourhood in 2D
        regions += [np.sort(m[lab == r]) for r in range(1, lab.max() + 1)]
        normal.append(m[lab == 0])
    normal = np.sort(np.concatenate(normal))
    thresholds = np.unique(np.concatenate([m.ravel() for m in maps]))[::-1]
    fpr = [0.0] + [1 - np.searchsorted(normal, t) / len(normal) for t in thresholds]
    pro = [0.0] + [np.mean([1 - np.searchsorted(r, t) / len(r) for r in regions]) for t in thresholds]
    area = 0.0
    for k in range(len(fpr) - 1):
        (x0, y0), (x1, y1) = (fpr[k], pro[k]), (fpr[k + 1], pro[k + 1])
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:  # interpolate PRO at max_fpr and stop there
            y1, x1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0), max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


# --- data ---------------------------------------------------------------------------------------------------


def structured_maps(n: int, h: int, w: int, rng: np.random.Generator, decimals: int | None = None):
    """Residual-like maps (smooth noise squared) and masks with blobs and single-pixel specks."""
    masks = np.zeros((n, h, w), dtype=bool)
    yy, xx = np.mgrid[:h, :w]
    for i in range(n):
        if i % 3 == 0:
            continue  # a third of the images are normal
        for _ in range(rng.integers(1, 4)):
            (cy, cx), (ry, rx) = rng.uniform(0, (h, w)), rng.uniform(1, (h / 4, w / 4))
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        masks[i, rng.integers(0, h, 6), rng.integers(0, w, 6)] = True  # many small regions
    noise = rng.normal(size=(n, h, w))
    noise = (noise + np.roll(noise, 1, 1) + np.roll(noise, 1, 2)) / 3  # a little spatial correlation
    maps = (0.1 * noise) ** 2 + masks * rng.uniform(0, 0.05, size=(n, h, w))
    if decimals is not None:
        maps = np.round(maps, decimals)  # many exact ties across both classes
    return maps.astype(np.float32), masks


def pixel_refs(maps: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, float]:
    """All four pixel metrics from the references."""
    s = np.concatenate([m.ravel() for m in maps]).astype(np.float64)
    y = np.concatenate([g.ravel() for g in masks]).astype(int)
    return {
        "pixel_auroc": ref_auroc(s, y),
        "pixel_ap": ref_ap(s, y),
        "pixel_f1_max": ref_f1_max(s, y)[0],
        "pixel_aupro": ref_aupro(maps, masks),
    }


def pixel_metric(num_bins: int | None, batches) -> PixelMetrics:
    """A PixelMetrics updated with (maps, masks) numpy batches."""
    metric = PixelMetrics(num_bins=num_bins)
    for maps, masks in batches:
        metric.update(torch.from_numpy(maps), torch.from_numpy(masks))
    return metric


# --- image level --------------------------------------------------------------------------------------------


def test_image_perfect_reversed_constant() -> None:
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    for scores, auroc in ((labels * 5.0 + 10, 1.0), (-labels * 5.0, 0.0), (torch.full((6,), 7.0), 0.5)):
        metric = ImageMetrics()
        metric.update(scores, labels)
        out = metric.compute()
        assert out["image_auroc"].item() == pytest.approx(auroc)
        if auroc == 1.0:
            assert out["image_ap"].item() == 1.0 and out["image_f1_max"].item() == 1.0


def test_image_raw_scores_are_not_squashed() -> None:
    # sigmoid(20) == sigmoid(30) == 1 in float32: a sigmoid inside the metric would tie these and give 0.75.
    metric = ImageMetrics()
    metric.update(torch.tensor([20.0, 30.0, 40.0, 50.0]), torch.tensor([0, 1, 0, 1]))
    out = metric.compute()
    assert out["image_auroc"].item() == pytest.approx(0.75)
    metric.reset()
    metric.update(torch.tensor([20.0, 30.0, 40.0, 50.0]), torch.tensor([0, 0, 1, 1]))
    out = metric.compute()
    assert out["image_auroc"].item() == 1.0 and out["image_f1_threshold"].item() == 40.0


@pytest.mark.parametrize("decimals", [None, 1])
def test_image_matches_reference(decimals: int | None) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = rng.normal(size=300) * 40 + labels * 30  # raw, far outside [0, 1]
    if decimals is not None:
        scores = np.round(scores / 20, decimals) * 20  # ties within and across classes
    metric = ImageMetrics()
    for part in np.array_split(np.arange(300), 4):
        metric.update(torch.from_numpy(scores[part]), torch.from_numpy(labels[part]))
    out = metric.compute()
    f1, threshold = ref_f1_max(scores, labels)
    assert out["image_auroc"].item() == pytest.approx(ref_auroc(scores, labels), abs=1e-6)
    assert out["image_ap"].item() == pytest.approx(ref_ap(scores, labels), abs=1e-6)
    assert out["image_f1_max"].item() == pytest.approx(f1, abs=1e-6)
    assert out["image_f1_threshold"].item() == pytest.approx(threshold, rel=1e-6)
    assert f1_max(torch.from_numpy(scores), torch.from_numpy(labels)) == pytest.approx((f1, threshold))


def test_f1_max_hand_made() -> None:
    # t=30 flags {30, 30, 100}: tp 2, fp 1, fn 0 -> F1 = 4/5; t=100: tp 1, fn 1 -> 2/3; t=3: 4/6.
    assert f1_max(torch.tensor([3.0, 30, 30, 100]), torch.tensor([0, 1, 0, 1])) == pytest.approx((0.8, 30.0))


def test_image_one_class_is_nan() -> None:
    metric = ImageMetrics()
    metric.update(torch.tensor([0.1, 0.4, 0.3]), torch.tensor([0, 0, 0]))
    with pytest.warns(UserWarning, match="no anomalous samples"):
        out = metric.compute()
    assert all(math.isnan(v.item()) for v in out.values())
    metric.reset()
    metric.update(torch.tensor([0.1, 0.4]), torch.tensor([1, 1]))
    with pytest.warns(UserWarning, match="no normal samples"):
        out = metric.compute()
    assert math.isnan(out["image_auroc"].item()) and math.isnan(out["image_ap"].item())
    assert out["image_f1_max"].item() == 1.0


# --- pixel level --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_bins", MODES.values(), ids=MODES.keys())
def test_pixel_perfect_reversed_constant(num_bins: int | None) -> None:
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 2:4, 2:5] = masks[1, 6:, 0] = True
    # A constant map has the single PRO curve (0, 0) -> (1, 1): area 0.3**2 / 2 over 0.3 = 0.15.
    cases = ((masks * 2.0, 1.0, 1.0), (masks * -2.0, 0.0, 0.0), (torch.ones(2, 8, 8), 0.5, 0.15))
    for maps, auroc, aupro in cases:
        metric = PixelMetrics(num_bins=num_bins)
        metric.update(maps, masks)
        out = metric.compute()
        assert out["pixel_auroc"].item() == pytest.approx(auroc)
        assert out["pixel_aupro"].item() == pytest.approx(aupro)
        if auroc == 1.0:
            assert out["pixel_ap"].item() == 1.0 and out["pixel_f1_max"].item() == 1.0


@pytest.mark.parametrize("num_bins", MODES.values(), ids=MODES.keys())
def test_pixel_aupro_hand_made(num_bins: int | None) -> None:
    # Regions (8-connected): A = {(0,0): 0.9, (1,1): 0.7} (diagonal, one region), B = {(0,3): 0.5}.
    # Nine normal pixels: 0.8, 0.6 and seven 0.1. Descending thresholds give (FPR, PRO):
    #   0.9: (0, 1/4)  0.8: (1/9, 1/4)  0.7: (1/9, 1/2)  0.6: (2/9, 1/2)  0.5: (2/9, 1)  0.1: (1, 1).
    # Area to 0.3: 1/9 * 1/4 + 1/9 * 1/2 + (0.3 - 2/9) * 1 = 29/180, so AUPRO = 29/180 / 0.3 = 29/54.
    # 4-connectivity would split A: PRO 1/3, 1/3, 2/3, 2/3, 1 and AUPRO = 17/27 instead.
    maps = torch.full((1, 3, 4), 0.1)
    masks = torch.zeros(1, 3, 4, dtype=torch.bool)
    for (y, x), score in {(0, 0): 0.9, (1, 1): 0.7, (0, 3): 0.5}.items():
        maps[0, y, x], masks[0, y, x] = score, True
    maps[0, 2, 0], maps[0, 2, 3] = 0.8, 0.6
    metric = PixelMetrics(num_bins=num_bins)
    metric.update(maps, masks)
    assert metric.compute()["pixel_aupro"].item() == pytest.approx(29 / 54, abs=1e-6)
    assert metric.regions.item() == 2
    assert ref_aupro([maps[0].numpy()], [masks[0].numpy()]) == pytest.approx(29 / 54)


@pytest.mark.parametrize("decimals", [None, 2], ids=["continuous", "ties"])
@pytest.mark.parametrize("num_bins", MODES.values(), ids=MODES.keys())
def test_pixel_matches_reference(num_bins: int | None, decimals: int | None) -> None:
    rng = np.random.default_rng(1)
    # Different map sizes across updates, each batch with normal images, blobs and single-pixel regions.
    batches = [structured_maps(3, 24, 32, rng, decimals), structured_maps(4, 16, 16, rng, decimals)]
    metric = pixel_metric(num_bins, batches)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither one-class nor binning warnings are expected here
        out = metric.compute()
    refs = pixel_refs([m for b in batches for m in b[0]], [g for b in batches for g in b[1]])
    tol = 1e-6 if num_bins is None else 1e-3  # float32 outputs; the binning contract
    for key, ref in refs.items():
        assert out[key].item() == pytest.approx(ref, abs=tol), key
    for key, bound in metric.binning_error_bound.items():  # the bound holds and is itself small
        assert abs(out[key].item() - refs[key]) <= bound + 1e-6 and bound < 1e-3


def test_pixel_binned_equals_exact_on_larger_maps() -> None:
    rng = np.random.default_rng(2)
    batches = [structured_maps(8, 64, 64, rng) for _ in range(2)]
    exact, binned = pixel_metric(None, batches).compute(), pixel_metric(2**20, batches).compute()
    for key in exact:
        assert binned[key].item() == pytest.approx(exact[key].item(), abs=1e-3), key


def test_pixel_one_class_is_nan() -> None:
    metric = PixelMetrics()
    metric.update(torch.rand(2, 8, 8), torch.zeros(2, 8, 8, dtype=torch.bool))
    with pytest.warns(UserWarning, match="no anomalous samples"):
        out = metric.compute()
    assert all(math.isnan(v.item()) for v in out.values())  # no region: PRO, hence AUPRO, is undefined
    metric.reset()
    metric.update(torch.rand(2, 8, 8), torch.ones(2, 8, 8, dtype=torch.bool))
    with pytest.warns(UserWarning, match="no normal samples"):
        out = metric.compute()
    assert math.isnan(out["pixel_auroc"].item()) and math.isnan(out["pixel_aupro"].item())  # FPR undefined


def test_pixel_regions_do_not_join_across_images() -> None:
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, -1, :] = masks[1, 0, :] = True  # touch across the batch axis
    metric = PixelMetrics()
    metric.update(torch.rand(2, 4, 4), masks)
    assert metric.regions.item() == 2


def test_pixel_offset_scores_warn() -> None:
    # 1000 + noise of 0.01 spans a handful of relative bins: the error bound flags it.
    rng = np.random.default_rng(3)
    maps, masks = structured_maps(4, 16, 16, rng)
    metric = pixel_metric(2**20, [(maps + 1000, masks)])
    with pytest.warns(UserWarning, match="binning may shift"):
        metric.compute()


def test_pixel_state_size_is_constant() -> None:
    metric = PixelMetrics()
    sizes = []
    for n in (1, 4):
        metric.update(torch.rand(n, 32, 32), torch.rand(n, 32, 32) > 0.9)
        sizes.append(sum(s.numel() for s in metric.metric_state.values()))
    assert sizes[0] == sizes[1]


# --- DDP: two ranks' states merged equal one metric on all data ---------------------------------------------


@pytest.mark.parametrize("num_bins", MODES.values(), ids=MODES.keys())
def test_merged_halves_equal_whole(num_bins: int | None) -> None:
    rng = np.random.default_rng(4)
    batches = [structured_maps(6, 16, 16, rng), structured_maps(6, 20, 12, rng)]
    whole, rank0, rank1 = (pixel_metric(num_bins, b) for b in (batches, batches[:1], batches[1:]))
    rank0.merge_state(rank1)
    merged, expected = rank0.compute(), whole.compute()
    for key in expected:
        assert merged[key].item() == pytest.approx(expected[key].item(), abs=1e-7), key

    scores, labels = torch.from_numpy(rng.normal(size=40)), torch.from_numpy(rng.integers(0, 2, 40))
    image_whole, image0, image1 = ImageMetrics(), ImageMetrics(), ImageMetrics()
    image_whole.update(scores, labels)
    image0.update(scores[:25], labels[:25])
    image1.update(scores[25:], labels[25:])
    image0.merge_state(image1)
    assert {k: v.item() for k, v in image0.compute().items()} == {
        k: v.item() for k, v in image_whole.compute().items()
    }

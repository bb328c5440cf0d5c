import json
import math

import pytest
import torch

from anomaly_ae.evaluation.metrics import PixelMetrics
from anomaly_ae.evaluation.thresholds import f1_and_iou, fit_image_threshold, fit_pixel_threshold
from anomaly_ae.reporting.run_outputs import pick_examples
from anomaly_ae.reporting.sweep import aggregate, write_report


def write_run(folder, category, seed, image, pixel, aupro):
    folder.mkdir(parents=True)
    metrics = {"test/image_auroc": image, "test/pixel_auroc": pixel, "test/pixel_aupro": aupro}
    report = {
        "metrics": metrics,
        "category": category,
        "seed": seed,
        "eval_resolution": "model input (32x32)",
    }
    (folder / "metrics.json").write_text(json.dumps(report))


def test_sweep_table_has_category_rows_and_paper_style_means(tmp_path):
    write_run(tmp_path / "a", "carpet", 0, 0.90, 0.95, 0.80)
    write_run(tmp_path / "b", "carpet", 1, 0.94, 0.97, 0.84)
    write_run(tmp_path / "c", "screw", 0, 0.70, 0.90, 0.60)
    rows = {
        r["category"]: r for r in aggregate([json.loads(p.read_text()) for p in tmp_path.rglob("*.json")])
    }
    assert rows["carpet"]["seeds"] == 2
    assert rows["carpet"]["image_auroc"] == pytest.approx(0.92)
    assert rows["carpet"]["image_auroc_std"] == pytest.approx(0.0282843, abs=1e-6)  # sample std of .90, .94
    assert rows["mean textures"]["image_auroc"] == pytest.approx(0.92)
    assert rows["mean objects"]["pixel_aupro"] == pytest.approx(0.60)
    assert rows["mean"]["image_auroc"] == pytest.approx((0.92 + 0.70) / 2)
    write_report(tmp_path)
    table = (tmp_path / "results.md").read_text()
    assert "| carpet | 2 | 92.0 ± 2.8 | 96.0 ± 1.4 | 82.0 ± 2.8 |" in table
    assert "| mean | | 81.0 | 93.0 | 71.0 |" in table.replace("|  |", "| |")
    assert "evaluated at model input (32x32)" in table
    assert (tmp_path / "results.csv").read_text().startswith("category,seeds,image_auroc")
    assert (tmp_path / "results.png").stat().st_size > 1000


def test_missing_pixel_metrics_are_reported_as_not_available(tmp_path):
    write_run(tmp_path / "a", "mono", 0, 0.9, math.nan, math.nan)
    write_report(tmp_path)
    assert "| mono | 1 | 90.0 | n/a | n/a |" in (tmp_path / "results.md").read_text()


def test_image_threshold_is_f1_optimal_on_pseudo_defects_with_quantile_fallback():
    scores = torch.tensor([0.1, 0.2, 0.3, 0.8, 0.9, 0.25])
    corrupted = torch.tensor([False, False, False, True, True, True])
    threshold, how = fit_image_threshold(scores, corrupted, "f1", 0.99)
    assert how == "f1 on validation pseudo-defects"
    # Thresholds 0.8 (F1 0.8) and 0.25 (tp 3, fp 1: F1 6/7): the best keeps every pseudo-defect.
    assert threshold == pytest.approx(0.25)
    threshold, how = fit_image_threshold(scores, torch.zeros(6, dtype=torch.bool), "f1", 0.5)
    assert how == "quantile 0.5 of clean validation (fallback: validation has no pseudo-defects)"
    assert threshold == pytest.approx(0.275)


def binary_counts(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(tp, fp, fn) of boolean predictions against boolean targets: the slow reference."""
    pred, target = pred.bool(), target.bool()
    return torch.stack([(pred & target).sum(), (pred & ~target).sum(), (~pred & target).sum()]).double()


def test_pixel_threshold_matches_a_brute_force_f1_search():
    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(4, 16, 16, dtype=torch.bool)
    masks[:, 4:8, 4:8] = True
    maps = torch.rand(4, 16, 16, generator=generator) + masks * 0.5
    metric = PixelMetrics()
    metric.update(maps, masks)
    threshold, how = fit_pixel_threshold(metric, "f1", 0.99)
    best = max(maps.unique().tolist(), key=lambda t: f1_and_iou(binary_counts(maps >= t, masks))[0])
    assert how == "f1 on validation pseudo-defects"
    assert f1_and_iou(binary_counts(maps >= threshold, masks))[0] == pytest.approx(
        f1_and_iou(binary_counts(maps >= best, masks))[0]
    )
    threshold, _ = fit_pixel_threshold(metric, "quantile", 0.9)
    normal = maps[~masks]
    # At most 10 % of the 960 normal pixels; binning (1.2e-4 relative) may merge a near-tie at the edge.
    assert 94 <= (normal >= threshold).sum() <= 96


def test_f1_and_iou_from_counts():
    counts = binary_counts(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0]))
    assert counts.tolist() == [1.0, 1.0, 1.0]
    assert f1_and_iou(counts) == (0.5, pytest.approx(1 / 3))


def test_examples_pick_best_and_worst_of_each_group():
    records = [
        {"label": label, "score": score}
        for label, score in [(0, 0.1), (0, 0.5), (0, 0.3), (1, 0.9), (1, 0.2)]
    ]
    picks = pick_examples(records, per_group=1)
    assert picks == [(0, "best normal"), (1, "worst normal"), (3, "best defective"), (4, "worst defective")]

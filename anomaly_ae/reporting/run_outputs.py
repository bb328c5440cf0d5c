"""Per-run outputs: scores.csv, roc_pr.png and examples.png next to metrics.json."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

from anomaly_ae.data.images import as_float
from anomaly_ae.evaluation.results import TestResults
from anomaly_ae.reporting.plots import save_curves, save_examples

SCORE_COLUMNS = ("path", "label", "defect_type", "score", "predicted")


def write_scores(path: Path, records: list[dict]) -> None:
    """One row per test image: path, label, defect type, score, predicted label at the fitted threshold."""
    write_csv(path, [{key: record[key] for key in SCORE_COLUMNS} for record in records])


def image_curves(records: list[dict], metrics: dict[str, float]) -> dict[str, np.ndarray] | None:
    """Exact image-level ROC and PR curves from the per-image records (None if one class is missing).

    The legend values are the run's own test metrics, not a second computation of them.
    """
    scores = torch.tensor([r["score"] for r in records], dtype=torch.float64)
    labels = torch.tensor([r["label"] for r in records])
    if labels.min() == labels.max():
        return None
    fpr, tpr, _ = binary_roc(scores, labels, thresholds=None)
    precision, recall, _ = binary_precision_recall_curve(scores, labels, thresholds=None)
    return {"fpr": fpr.numpy(), "tpr": tpr.numpy(), "precision": precision.numpy(), "recall": recall.numpy(),
            "auroc": metrics["test/image_auroc"], "ap": metrics["test/image_ap"]}  # fmt: skip


def pick_examples(records: list[dict], per_group: int = 2) -> list[tuple[int, str]]:
    """Indices (into records) of the best- and worst-scored normal and defective images, with a caption."""
    chosen = []
    for label, name in ((0, "normal"), (1, "defective")):
        group = sorted((r["score"], i) for i, r in enumerate(records) if r["label"] == label)
        if not group:
            continue
        lowest, highest = group[:per_group], group[::-1][:per_group]
        best, worst = (lowest, highest) if label == 0 else (highest, lowest)
        for tag, items in (("best", best), ("worst", worst)):
            chosen += [(i, f"{tag} {name}") for _, i in items if i not in {c for c, _ in chosen}]
    return chosen


def write_examples(path: Path, results: TestResults) -> None:
    """examples.png: input, reconstruction, anomaly-map overlay and mask of the picked test images."""
    picks = pick_examples(results.records)
    if not picks:
        return
    maps = results.maps[[i for i, _ in picks]]
    vmax = float(maps.max())  # one colour scale for the whole grid, so rows can be compared
    rows = []
    for (i, caption), amap in zip(picks, maps, strict=True):
        record = results.records[i]
        has_mask = results.masks is not None and record["label"] == 1
        title = f"{caption} ({record['defect_type']}) score {record['score']:.4g}"
        rows.append(
            {
                "image": as_float(results.images[i]),
                "reconstruction": as_float(results.reconstructions[i]),
                "amap": amap,
                "mask": results.masks[i].float() if has_mask else None,
                "title": title,
            }
        )
    save_examples(path, rows, vmax)


def write_run_outputs(output_dir: Path, results: TestResults) -> dict[str, str]:
    """Write scores.csv, roc_pr.png and examples.png; return {what: path}."""
    written = {"scores": output_dir / "scores.csv"}
    write_scores(written["scores"], results.records)
    curves = test_curves(results)
    if curves:
        written["roc_pr"] = output_dir / "roc_pr.png"
        save_curves(written["roc_pr"], curves)
    written["examples"] = output_dir / "examples.png"
    write_examples(written["examples"], results)
    return {key: str(value) for key, value in written.items()}


def test_curves(results: TestResults) -> dict[str, dict]:
    """The image-level and (with masks) pixel-level ROC and PR curves of a test run."""
    curves = {}
    if (image := image_curves(results.records, results.metrics)) is not None:
        curves["image"] = image
    if results.pixel_curves:
        curves["pixel"] = results.pixel_curves
    return curves


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of equal keys as a CSV file with a header."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

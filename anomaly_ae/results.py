"""Per-run outputs: scores.csv, roc_pr.png and examples.png next to metrics.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_precision_recall_curve, binary_roc

from anomaly_ae.cli_support import write_csv
from anomaly_ae.scoring import as_float
from anomaly_ae.visualize import save_curves, save_examples

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


@torch.no_grad()
def write_examples(path: Path, module, dataset, records: list[dict]) -> None:
    """examples.png: input, reconstruction, anomaly-map overlay and mask of the picked test images."""
    index_of = {sample.path: i for i, sample in enumerate(dataset.samples)}
    picks = pick_examples(records)
    if not picks:
        return
    items = [dataset[index_of[records[i]["path"]]] for i, _ in picks]
    images = as_float(torch.stack([item["image"] for item in items]).to(module.device))
    module.eval()
    reconstructions = module.model(images)
    maps, scores = module.score(images, reconstructions)
    vmax = float(maps.max())  # one colour scale for the whole grid, so rows can be compared
    rows = []
    for k, ((_, caption), item) in enumerate(zip(picks, items, strict=True)):
        mask = item["mask"][0].float() if item["label"] == 1 and module.hparams.has_masks else None
        if mask is not None and mask.shape != maps[k].shape:
            mask = torch.nn.functional.interpolate(mask[None, None], size=maps[k].shape, mode="nearest")[0, 0]
        title = f"{caption} ({item['defect_type']}) score {scores[k]:.4g}"
        rows.append({"image": images[k], "reconstruction": reconstructions[k], "amap": maps[k], "mask": mask,
                     "title": title})  # fmt: skip
    save_examples(path, rows, vmax)


def write_run_outputs(output_dir: Path, module, datamodule, metrics: dict[str, float]) -> dict[str, str]:
    """Write scores.csv, roc_pr.png and examples.png; return {what: path}."""
    order = {sample.path: i for i, sample in enumerate(datamodule.test_set.samples)}
    records = sorted(module.test_records, key=lambda record: order[record["path"]])  # DDP ranks interleave
    written = {"scores": output_dir / "scores.csv"}
    write_scores(written["scores"], records)
    curves = {}
    image = image_curves(records, metrics)
    if image is not None:
        curves["image"] = image
    if getattr(module, "test_pixel_curves", None):
        curves["pixel"] = module.test_pixel_curves
    if curves:
        written["roc_pr"] = output_dir / "roc_pr.png"
        save_curves(written["roc_pr"], curves)
    written["examples"] = output_dir / "examples.png"
    write_examples(written["examples"], module, datamodule.test_set, records)
    return {key: str(value) for key, value in written.items()}

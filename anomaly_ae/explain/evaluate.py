"""anomaly-ae explain-evaluate: every explanation method against the defect masks of a test split.

anomaly-ae explain-evaluate checkpoint=<run>/checkpoints/best.ckpt data.root=<root>
Writes explain_results.md / .csv (mean and std per method), explain_per_image.csv and explain_grid.png.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Subset

from anomaly_ae.data.images import as_float
from anomaly_ae.explain.localization import METRICS
from anomaly_ae.explain.relevance import Method, explain
from anomaly_ae.inference.loading import image_size, load_scorer, resolve_device, training_value
from anomaly_ae.model.scorer import AnomalyScorer
from anomaly_ae.reporting import plots
from anomaly_ae.reporting.run_outputs import write_csv

# Absolute: Hydra resolves a relative path against a package when this module is imported, not run.


def defective_indices(dataset) -> dict[str, list[int]]:
    """Indices of the test images that have a ground-truth mask, by defect type."""
    groups = defaultdict(list)
    for i, sample in enumerate(dataset.samples):
        if sample.label == 1 and sample.mask_path:
            groups[sample.defect_type].append(i)
    if not groups:
        raise ValueError("the test split holds no defective image with a mask: nothing to evaluate")
    return dict(groups)


def figure_indices(groups: dict[str, list[int]], rows: int) -> list[int]:
    """Up to `rows` indices, taken in turn from each defect type."""
    picked, depth = [], 0
    while len(picked) < rows and depth < max(map(len, groups.values())):
        picked += [group[depth] for group in groups.values() if depth < len(group)]
        depth += 1
    return picked[:rows]


def score_methods(scorer, loader, methods: dict[str, Method], device, tolerance: int) -> list[dict]:
    """One row per (image, method): the three localisation metrics and the seconds per image."""
    rows = []
    for batch in loader:
        images = as_float(batch["image"]).to(device)
        masks = batch["mask"][:, 0].bool().to(device)
        for name, method in methods.items():
            start = time.perf_counter()
            heat = explain(scorer, images, method).heatmap
            if device.type == "cuda":  # kernels run asynchronously: wait before reading the clock
                torch.cuda.synchronize()
            seconds = (time.perf_counter() - start) / len(images)
            values = {
                key: (fn(heat, masks, tolerance) if key == "pointing_game" else fn(heat, masks)).tolist()
                for key, fn in METRICS.items()
            }
            for i in range(len(images)):
                row = {"image": batch["path"][i], "defect_type": batch["defect_type"][i], "method": name}
                rows.append(row | {key: values[key][i] for key in METRICS} | {"seconds": seconds})
    return rows


def summarise(rows: list[dict], category: str) -> list[dict]:
    """Mean and sample std over images per method, in the order the methods were run."""
    by_method = defaultdict(list)
    for row in rows:
        by_method[row["method"]].append(row)
    summary = []
    for name, group in by_method.items():
        entry = {"category": category, "method": name, "images": len(group)}
        for key in (*METRICS, "seconds"):
            values = np.array([row[key] for row in group], dtype=float)
            entry[f"{key}_mean"] = float(values.mean())
            entry[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def markdown(summary: list[dict], rows: list[dict], header: str) -> str:
    """The results table, then mass accuracy per defect type."""
    lines = [
        header,
        "",
        "| method | mass accuracy | rank accuracy | pointing game | s / image |",
        "|---|---|---|---|---|",
    ]
    for entry in summary:
        cells = [f"{entry[f'{k}_mean']:.3f} ± {entry[f'{k}_std']:.3f}" for k in METRICS]
        lines.append(f"| {entry['method']} | {' | '.join(cells)} | {entry['seconds_mean']:.3f} |")
    types = sorted({row["defect_type"] for row in rows})
    lines += ["", "Mass accuracy per defect type (mean):", ""]
    lines += ["| method | " + " | ".join(types) + " |", "|---|" + "---|" * len(types)]
    for entry in summary:
        cells = [
            np.mean(
                [r["mass_accuracy"] for r in rows if r["method"] == entry["method"] and r["defect_type"] == t]
            )
            for t in types
        ]
        lines.append(f"| {entry['method']} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    return "\n".join(lines) + "\n"


def figure(scorer: AnomalyScorer, dataset, indices: list[int], methods: dict[str, Method], device, tile: int):
    """Rows: images; columns: input, mask, anomaly map, then each method's relevance."""
    items = [dataset[i] for i in indices]
    images = as_float(torch.stack([item["image"] for item in items])).to(device)
    shown = {name: method for name, method in methods.items() if method.kind != "residual"}
    results = {name: explain(scorer, images, method) for name, method in shown.items()}
    with torch.no_grad():
        maps = scorer.anomaly_map(images, scorer.autoencoder(images))
    rows = []
    for i, item in enumerate(items):
        row = [plots.image_rgb(images[i]), plots.image_rgb(item["mask"][0].float())]
        row.append(plots.magnitude_rgb(maps[i]))
        for name, method in shown.items():
            heat = results[name].heatmap[i]
            row.append(plots.relevance_rgb(heat, signed=method.pooling == "sum"))
        rows.append(row)
    return plots.grid(rows, ["input", "mask", "anomaly map", *shown], tile)


def evaluate(cfg: DictConfig) -> list[dict]:
    """Run every configured method on the defective test images; write and return the summary rows."""
    cfg.category = training_value(cfg.checkpoint, "category", cfg.category, "category")
    cfg.image_size = image_size(cfg.checkpoint, cfg.image_size)
    device = resolve_device(cfg.device)
    scorer = load_scorer(cfg.checkpoint, device, cfg.reduction)
    methods = {name: Method.from_config(method) for name, method in cfg.methods.items()}
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    groups = defective_indices(datamodule.test_set)
    subset = Subset(datamodule.test_set, sorted(i for group in groups.values() for i in group))
    loader = DataLoader(subset, batch_size=cfg.batch_size, num_workers=0)
    rows = score_methods(scorer, loader, methods, device, cfg.pointing_tolerance)
    summary = summarise(rows, cfg.category)

    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    write_csv(output / "explain_results.csv", summary)
    write_csv(output / "explain_per_image.csv", rows)
    header = (
        f"Category `{cfg.category}`: {len(subset)} defective test images at {cfg.image_size} px, "
        f"score reduction `{scorer.reduction}`, checkpoint `{cfg.checkpoint}`. Mean ± std over images."
    )
    (output / "explain_results.md").write_text(markdown(summary, rows, header))
    grid = figure(
        scorer, datamodule.test_set, figure_indices(groups, cfg.figure_rows), methods, device, cfg.figure_tile
    )
    plots.save_png(grid, output / "explain_grid.png")
    print((output / "explain_results.md").read_text())
    print(f"results in {output}")
    return summary

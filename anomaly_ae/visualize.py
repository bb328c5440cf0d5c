"""Pictures people read instead of numbers: ROC/PR curves and example grids with anomaly-map overlays."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in DDP workers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def heat_overlay(image: Tensor, amap: Tensor, vmax: float, alpha: float = 0.5) -> np.ndarray:
    """(C, H, W) image in [0, 1] and (H, W) map -> (H, W, 3) float RGB with the map as a jet overlay."""
    rgb = image.expand(3, -1, -1).permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    heat = plt.get_cmap("jet")(np.clip(amap.cpu().numpy() / max(vmax, 1e-12), 0, 1))[..., :3]
    return (1 - alpha) * rgb + alpha * heat


def save_curves(path: Path, curves: dict[str, dict[str, np.ndarray]]) -> None:
    """ROC and PR panels per level ("image", "pixel"): fpr, tpr, recall, precision, auroc, ap per level."""
    fig = curves_figure(curves)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def curves_figure(curves: dict[str, dict[str, np.ndarray]]) -> plt.Figure:
    """The figure of save_curves, for loggers that take figures (TensorBoard)."""
    levels = [level for level in ("image", "pixel") if level in curves]
    fig, axes = plt.subplots(len(levels), 2, figsize=(8, 3.8 * len(levels)), squeeze=False)
    for row, level in enumerate(levels):
        c = curves[level]
        roc, pr = axes[row]
        roc.plot(c["fpr"], c["tpr"], label=f"AUROC {c['auroc']:.4f}")
        roc.plot([0, 1], [0, 1], ls=":", c="grey")
        roc.set(xlabel="false positive rate", ylabel="true positive rate", title=f"{level} ROC")
        pr.plot(c["recall"], c["precision"], label=f"AP {c['ap']:.4f}")
        pr.set(xlabel="recall", ylabel="precision", title=f"{level} precision-recall", ylim=(0, 1.02))
        for ax in (roc, pr):
            ax.legend(loc="lower right" if ax is roc else "lower left")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def save_examples(path: Path, rows: list[dict], vmax: float) -> None:
    """Grid: one row per example (input, reconstruction, overlay, ground truth), titled with its score.

    rows: dicts with image (C, H, W), reconstruction (C, H, W), amap (H, W), mask (H, W) or None, title.
    """
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows, strict=True):
        gray = "gray" if row["image"].shape[0] == 1 else None
        panels = [
            (_hwc(row["image"]), gray, "input"),
            (_hwc(row["reconstruction"]), gray, "reconstruction"),
            (heat_overlay(row["image"], row["amap"], vmax), None, "anomaly map"),
            (
                np.zeros(row["amap"].shape) if row["mask"] is None else row["mask"].cpu().numpy(),
                "gray",
                "mask",
            ),
        ]
        for ax, (picture, cmap, name) in zip(ax_row, panels, strict=True):
            ax.imshow(picture, cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name if ax is not ax_row[0] else f"{row['title']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _hwc(image: Tensor) -> np.ndarray:
    array = image.clamp(0, 1).cpu().numpy()
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def bar_chart(
    path: Path, names: list[str], series: dict[str, list[float]], errors: dict | None = None
) -> None:
    """Grouped bars, one group per name and one bar per series (e.g. image / pixel AUROC)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) * len(series)), 4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(names))
    for i, (label, values) in enumerate(series.items()):
        err = None if errors is None else errors.get(label)
        ax.bar(x + i * width, np.nan_to_num(values), width, yerr=err, label=label, capsize=2)
    ax.set_xticks(x + width * (len(series) - 1) / 2, names, rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower right")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def as_cpu(tensor: Tensor) -> Tensor:
    return tensor.detach().float().cpu() if torch.is_tensor(tensor) else tensor

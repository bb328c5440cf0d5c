"""Every picture the project draws: ROC/PR curves, example grids, anomaly-map overlays, relevance heat maps.

Matplotlib draws figures (curves, example grids) and the jet overlay of anomaly maps; relevance heat maps
and the explanation grids are composed directly as uint8 arrays with Pillow, so that explaining a folder of
images costs no figure per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in DDP workers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402
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


# Diverging blue - white - red for signed relevance, as in the LRP literature (zennit's "bwr").
_DIVERGING = np.array([[0, 0, 255], [255, 255, 255], [255, 0, 0]], dtype=np.float64)
# Sequential black - red - yellow - white for non-negative anomaly maps ("hot").
_SEQUENTIAL = np.array([[0, 0, 0], [230, 0, 0], [255, 210, 0], [255, 255, 255]], dtype=np.float64)
ROBUST_PERCENTILE = 99.5  # colour limits ignore the few most extreme pixels, which LRP maps often have


def _lookup(values: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Piecewise-linear colour map: values in [0, 1] -> (..., 3) uint8."""
    position = np.clip(values, 0, 1) * (len(colours) - 1)
    low = np.minimum(np.floor(position).astype(int), len(colours) - 2)
    frac = (position - low)[..., None]
    return np.rint(colours[low] * (1 - frac) + colours[low + 1] * frac).astype(np.uint8)


def _numpy(array: Tensor | np.ndarray) -> np.ndarray:
    return array.detach().float().cpu().numpy() if isinstance(array, Tensor) else np.asarray(array, float)


def signed_rgb(heatmap: Tensor | np.ndarray, limit: float | None = None) -> np.ndarray:
    """(H, W) signed relevance -> (H, W, 3) uint8; 0 is white, +limit red, -limit blue."""
    values = _numpy(heatmap)
    if limit is None:
        limit = float(np.percentile(np.abs(values), ROBUST_PERCENTILE))
    return _lookup(0.5 + 0.5 * values / max(limit, 1e-12), _DIVERGING)


def magnitude_rgb(heatmap: Tensor | np.ndarray, limit: float | None = None) -> np.ndarray:
    """(H, W) non-negative map -> (H, W, 3) uint8 with the sequential map; 0 is black."""
    values = _numpy(heatmap)
    if limit is None:
        limit = float(np.percentile(values, ROBUST_PERCENTILE))
    return _lookup(values / max(limit, 1e-12), _SEQUENTIAL)


def relevance_rgb(heatmap: Tensor | np.ndarray, signed: bool) -> np.ndarray:
    """Signed relevance with the diverging map, magnitudes (l2-pooled gradients) with the sequential one."""
    return signed_rgb(heatmap) if signed else magnitude_rgb(heatmap)


def image_rgb(image: Tensor | np.ndarray) -> np.ndarray:
    """(C, H, W) image in [0, 1] (C = 1 or 3), or an (H, W) mask -> (H, W, 3) uint8."""
    values = _numpy(image)
    if values.ndim == 3:
        values = values.transpose(1, 2, 0)
        values = np.repeat(values, 3, axis=2) if values.shape[2] == 1 else values
    else:
        values = np.repeat(values[..., None], 3, axis=2)
    return np.rint(np.clip(values, 0, 1) * 255).astype(np.uint8)


def grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], tile: int | None = None) -> Image.Image:
    """Tiles (H, W, 3) uint8 in rows, one caption per column above the first row."""
    tile = tile or rows[0][0].shape[0]
    caption = 14  # px of caption text above the tiles
    canvas = Image.new("RGB", (tile * len(titles), caption + tile * len(rows)), "white")
    draw = ImageDraw.Draw(canvas)
    for col, title in enumerate(titles):
        draw.text((col * tile + 2, 1), title[: tile // 6], fill="black")  # ~6 px per glyph
    for r, row in enumerate(rows):
        for col, array in enumerate(row):
            image = Image.fromarray(array).resize((tile, tile), Image.NEAREST)
            canvas.paste(image, (col * tile, caption + r * tile))
    return canvas


def save_png(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path

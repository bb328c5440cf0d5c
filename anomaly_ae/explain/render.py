"""Heat maps as PNGs with Pillow and two hand-made colour maps (no matplotlib dependency)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from torch import Tensor

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


def save(image: Image.Image, path: str | Path) -> Path:
    """Write a PNG, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path

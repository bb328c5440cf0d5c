"""Embedded real demo data: electroluminescence images of solar cells (the `elpv-dataset` package).

2,624 grayscale 300x300 cells, `mono` or `poly`, each with an expert defect probability in
{0, 1/3, 2/3, 1}. Image labels only, no masks. Licence: CC BY-NC-SA 4.0 (non-commercial).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from anomaly_ae.data.base import AnomalyDataModule, split_normals
from anomaly_ae.data.images import pil_to_uint8
from anomaly_ae.data.listing import Listing, Sample
from anomaly_ae.optional import require

CATEGORIES = ("mono", "poly")


def elpv_labels() -> tuple[Path, list[tuple[str, float, str]]]:
    """(image folder root, [(relative path, defect probability, cell type)]) from the package's labels.csv."""
    elpv_dataset = require("elpv_dataset", "demo")
    root = Path(elpv_dataset.__file__).parent / "data"
    rows = []
    for line in (root / "labels.csv").read_text().splitlines():
        if line.strip():
            path, probability, kind = line.split()
            rows.append((path, float(probability), kind))
    return root, rows


def elpv_split(
    category: str, train_fraction: float, min_defect_probability: float, seed: int
) -> tuple[list[Sample], list[Sample]]:
    """Seeded split: train = share of the probability-0 cells; test = the other normals + clear defects."""
    if category not in CATEGORIES:
        raise ValueError(f"ELPV category={category!r} is not one of {CATEGORIES}")
    root, rows = elpv_labels()
    rows = [r for r in rows if r[2] == category]
    normal = [Sample(str(root / path), 0) for path, p, _ in rows if p == 0]
    # Cells between 0 and the threshold (by default the 1/3 "maybe" cells) are left out: ambiguous labels.
    defective = [Sample(str(root / path), 1, "defect") for path, p, _ in rows if p >= min_defect_probability]
    train, held_out = split_normals(normal, 1 - train_fraction, seed)
    return train, held_out + defective


class ElpvDataModule(AnomalyDataModule):
    """ELPV `mono` or `poly` cells, decoded once and kept in memory as resized uint8 tensors."""

    has_masks = False

    def __init__(
        self,
        category: str = "mono",
        train_fraction: float = 0.8,
        min_defect_probability: float = 0.6,
        cache: bool = True,  # 300x300 cells: the whole category fits in memory many times over
        **kwargs,
    ) -> None:
        super().__init__(channels=1, cache=cache, **kwargs)
        self.category, self.train_fraction = category, train_fraction
        self.min_defect_probability = min_defect_probability

    @property
    def where(self) -> str:
        return f"ELPV category '{self.category}'"

    def load(self) -> Listing:
        train, test = elpv_split(
            self.category, self.train_fraction, self.min_defect_probability, self.split_seed
        )
        return Listing(train, test)

    def cache_image(self, image: Image.Image, channels: int) -> torch.Tensor:
        # Antialiased torch resize of the 300 px cell, as the demo's published numbers were made with.
        cell = pil_to_uint8(image, 1, None).float()[None]  # (1, 1, 300, 300)
        resized = F.interpolate(cell, size=(self.image_size,) * 2, mode="bilinear", antialias=True)
        return resized[0].round().clamp(0, 255).to(torch.uint8)

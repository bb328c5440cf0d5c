"""Shared test builders: a tiny MVTec-layout tree of textured images, and config composition."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from PIL import Image

from anomaly_ae.cli.common import CONF_DIR


def stripes(size: int, rng: np.random.Generator, channels: int) -> np.ndarray:
    """A normal image: diagonal stripes with a random phase, plus a little noise; uint8 (H, W[, C])."""
    y, x = np.mgrid[:size, :size]
    phase = rng.uniform(0, 2 * np.pi)
    image = 0.5 + 0.35 * np.sin(2 * np.pi * (x + y) / 8 + phase) + rng.normal(0, 0.02, (size, size))
    image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return np.repeat(image[..., None], channels, axis=2) if channels == 3 else image


def add_defect(image: np.ndarray, rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Paint a flat bright square (the defect); return the image and its 0/255 mask."""
    size = image.shape[0]
    top, left = rng.integers(2, size - side - 2, size=2)
    mask = np.zeros((size, size), np.uint8)
    mask[top : top + side, left : left + side] = 255
    image = image.copy()
    image[mask > 0] = 250
    return image, mask


def make_mvtec_tree(
    root: Path,
    category: str = "toy",
    size: int = 32,
    n_train: int = 24,
    n_good: int = 6,
    n_defect: int = 6,
    channels: int = 1,
    seed: int = 0,
) -> Path:
    """Write <root>/<category>/{train/good, test/good, test/square, ground_truth/square} PNGs."""
    rng = np.random.default_rng(seed)
    base = root / category
    for folder in ("train/good", "test/good", "test/square", "ground_truth/square"):
        (base / folder).mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        Image.fromarray(stripes(size, rng, channels)).save(base / "train/good" / f"{i:03d}.png")
    for i in range(n_good):
        Image.fromarray(stripes(size, rng, channels)).save(base / "test/good" / f"{i:03d}.png")
    for i in range(n_defect):
        image, mask = add_defect(stripes(size, rng, channels), rng, side=max(3, size // 6))
        Image.fromarray(image).save(base / "test/square" / f"{i:03d}.png")
        Image.fromarray(mask).save(base / "ground_truth/square" / f"{i:03d}_mask.png")
    return root


def compose_config(overrides: list[str]) -> DictConfig:
    """The real config, composed as `python -m anomaly_ae.run <overrides>` would."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def tiny_overrides(root: Path, output_dir: Path, category: str = "toy") -> list[str]:
    """A run on the toy tree that takes seconds on a CPU."""
    return [
        f"data.root={root}",
        f"category={category}",
        f"output_dir={output_dir}",
        "trainer=cpu",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "data.image_size=32",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.val_fraction=0.25",
        "model.width=8",
        "model.depth=2",
        "model.dilations=[1,2]",
        "score.sigma=1",
        "trainer.check_val_every_n_epoch=1",
    ]


def load_script(name: str) -> ModuleType:
    """A script of experiments/ (not a package) imported by path, as the scripts import each other."""
    path = Path(__file__).resolve().parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

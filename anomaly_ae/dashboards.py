"""What the loggers show besides scalars: the validation panel, the per-image test table and the curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.utils import make_grid, save_image

from anomaly_ae.module import VAL_CORRUPTION_SEED
from anomaly_ae.scoring import as_float
from anomaly_ae.visualize import curves_figure, heat_overlay

PANEL_COLUMNS = ("input", "corrupted", "reconstruction", "anomaly map", "corruption mask")


def _rgb(images: Tensor) -> Tensor:
    return images.float().clamp(0, 1).expand(-1, 3, -1, -1)


def _heat(images: Tensor, maps: Tensor, vmax: float, alpha: float) -> Tensor:
    """(N, C, H, W) images and (N, H, W) maps -> (N, 3, H, W) jet-coloured maps over the images."""
    return (
        torch.stack(
            [torch.from_numpy(heat_overlay(i, m, vmax, alpha)) for i, m in zip(images, maps, strict=True)]
        )
        .permute(0, 3, 1, 2)
        .float()
    )


@torch.no_grad()
def validation_panel(module, images: Tensor) -> Tensor:
    """(N, C, H, W) clean validation images -> (3, H', W') grid, one row per image: the PANEL_COLUMNS.

    The corruption uses the validation seed, so every panel of a run shows the same pseudo-defects.
    """
    generator = torch.Generator(device=images.device).manual_seed(VAL_CORRUPTION_SEED)
    corrupted, mask = module.val_corruption(images, generator)
    reconstructions = module.model(corrupted)
    maps, _ = module.score(corrupted, reconstructions)
    heat = _heat(corrupted.cpu(), maps.cpu(), float(maps.max()), alpha=1.0)  # one colour scale per panel
    tiles = [_rgb(images.cpu()), _rgb(corrupted.cpu()), _rgb(reconstructions.cpu()), heat, _rgb(mask.cpu())]
    rows = torch.stack(tiles, dim=1)  # (N, 5, 3, H, W): one row per image
    return make_grid(rows.flatten(0, 1), nrow=len(PANEL_COLUMNS), padding=2, pad_value=1.0)


def draw_image(logger: Logger, key: str, grid: Tensor, step: int) -> Path | None:
    """Send a (3, H, W) image in [0, 1] to a logger that takes images; CSV: a PNG under its log dir."""
    if isinstance(logger, WandbLogger):
        pixels = (grid * 255).round().byte().permute(1, 2, 0).numpy()
        logger.log_image(key, [pixels], step=step, caption=[" | ".join(PANEL_COLUMNS)])
    elif isinstance(logger, TensorBoardLogger):
        logger.experiment.add_image(key, grid, step)
    elif isinstance(logger, CSVLogger):
        path = Path(logger.log_dir) / "images" / f"{key.replace('/', '_')}_step{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
        return path
    return None


@torch.no_grad()
def test_overlays(module, loader) -> dict[str, dict]:
    """path -> {overlay (H, W, 3) uint8, mask (H, W) uint8} of every test image, at the model's size."""
    images, maps, masks, paths = [], [], [], []
    for batch in loader:
        batch_images = as_float(batch["image"]).to(module.device)
        batch_maps, _ = module(batch_images)
        masks.append(F.interpolate(batch["mask"].float(), size=batch_maps.shape[-2:], mode="nearest")[:, 0])
        images.append(batch["image"])  # uint8: a quarter of the memory of floats
        maps.append(batch_maps.cpu())
        paths += list(batch["path"])
    maps_all = torch.cat(maps)
    vmax = float(maps_all.max())  # one colour scale for the whole table, so rows can be compared
    overlays = _heat(as_float(torch.cat(images)), maps_all, vmax, alpha=0.5)
    pixels = (overlays * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return {
        path: {"overlay": pixels[i], "mask": (torch.cat(masks)[i] > 0).numpy().astype(np.uint8)}
        for i, path in enumerate(paths)
    }


def wandb_test_table(records: list[dict], overlays: dict[str, dict], has_masks: bool):
    """W&B table, one row per test image: path, defect type, label, score, prediction, overlay with mask."""
    import wandb

    columns = ["path", "defect_type", "label", "score", "predicted", "overlay"]
    table = wandb.Table(columns=columns)
    for record in records:
        drawn = overlays[record["path"]]
        masks = None
        if has_masks and record["label"] == 1:  # W&B draws the ground truth as a toggleable layer
            masks = {"ground_truth": {"mask_data": drawn["mask"], "class_labels": {1: "defect"}}}
        image = wandb.Image(drawn["overlay"], masks=masks)
        table.add_data(*(record[c] for c in columns[:-1]), image)
    return table


def wandb_curves(curves: dict[str, dict]) -> dict:
    """W&B line plots of the ROC and PR curves per level, titled with the run's own AUROC / AP."""
    import wandb

    plots = {}
    for level, c in curves.items():
        for name, x, y, title in (
            ("roc", "fpr", "tpr", f"{level} ROC (AUROC {c['auroc']:.4f})"),
            ("pr", "recall", "precision", f"{level} precision-recall (AP {c['ap']:.4f})"),
        ):
            table = wandb.Table(columns=[x, y], data=np.stack([c[x], c[y]], axis=1).tolist())
            plots[f"test/{level}_{name}"] = wandb.plot.line(table, x, y, title=title)
    return plots


def log_test_results(logger: Logger, module, loader, curves: dict[str, dict], step: int, table: bool) -> None:
    """Test-time pictures for one logger: W&B gets the table and curves, TensorBoard the curves figure."""
    if isinstance(logger, WandbLogger):
        logged = wandb_curves(curves)
        if table:
            overlays = test_overlays(module, loader)
            logged["test/images"] = wandb_test_table(module.test_records, overlays, module.hparams.has_masks)
        logger.experiment.log(logged)
    elif isinstance(logger, TensorBoardLogger) and curves:
        logger.experiment.add_figure("test/roc_pr", curves_figure(curves), step)  # add_figure closes it

"""What loggers show besides scalars: validation panel, per-image test table, curves; the W&B run's life."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger, WandbLogger
from torch import Tensor
from torchvision.utils import make_grid, save_image

from anomaly_ae.data.images import as_float
from anomaly_ae.evaluation.results import TestRecorder, TestResults
from anomaly_ae.reporting.plots import curves_figure, heat_overlay
from anomaly_ae.reporting.run_outputs import test_curves

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
def validation_panel(module, images: Tensor, seed: int) -> Tensor:
    """(N, C, H, W) clean validation images -> (3, H', W') grid, one row per image: the PANEL_COLUMNS.

    The corruption uses the validation `seed`, so every panel of a run shows the same pseudo-defects.
    """
    generator = torch.Generator(device=images.device).manual_seed(seed)
    corrupted, mask = module.val_corruption(images, generator)
    reconstructions = module.autoencoder(corrupted)
    maps = module.scorer.anomaly_map(corrupted, reconstructions)
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


def test_overlays(results: TestResults) -> dict[str, dict]:
    """path -> {overlay (H, W, 3) uint8, mask (H, W) uint8} of every test image, at the model's size."""
    vmax = float(results.maps.max())  # one colour scale for the whole table, so rows can be compared
    overlays = _heat(as_float(results.images), results.maps, vmax, alpha=0.5)
    pixels = (overlays * 255).round().byte().permute(0, 2, 3, 1).numpy()
    masks = results.masks if results.masks is not None else torch.zeros_like(results.maps, dtype=torch.bool)
    return {
        record["path"]: {"overlay": pixels[i], "mask": masks[i].numpy().astype(np.uint8)}
        for i, record in enumerate(results.records)
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


def log_test_results(logger: Logger, results: TestResults, step: int, table: bool) -> None:
    """Test-time pictures for one logger: W&B gets the table and curves, TensorBoard the curves figure."""
    curves = test_curves(results)
    if isinstance(logger, WandbLogger):
        logged = wandb_curves(curves)
        if table:
            overlays = test_overlays(results)
            logged["test/images"] = wandb_test_table(results.records, overlays, results.masks is not None)
        logger.experiment.log(logged)
    elif isinstance(logger, TensorBoardLogger) and curves:
        logger.experiment.add_figure("test/roc_pr", curves_figure(curves), step)  # add_figure closes it


class ValidationPanel(Callback):
    """Every `every_n_epochs` (at a validation), draw a fixed validation batch to every logger with images."""

    def __init__(self, every_n_epochs: int, images: int, seed: int) -> None:
        self.every_n_epochs, self.images, self.seed = every_n_epochs, images, seed
        self._last_epoch: int | None = None

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch
        if trainer.sanity_checking or not self.every_n_epochs or not trainer.is_global_zero:
            return
        if self._last_epoch is not None and epoch - self._last_epoch < self.every_n_epochs:
            return
        self._last_epoch = epoch
        dataset = trainer.val_dataloaders.dataset
        items = [dataset[i] for i in range(min(self.images, len(dataset)))]
        images = as_float(torch.stack([item["image"] for item in items])).to(pl_module.device)
        grid = validation_panel(pl_module, images, self.seed)
        for logger in trainer.loggers:
            draw_image(logger, "val/panel", grid, trainer.global_step)


class TestDashboards(Callback):
    """After testing: ROC/PR curves (W&B, TensorBoard) and the per-image table with overlays (W&B).

    Draws from the recorder's TestResults (listed before this callback, so they are complete here).
    """

    def __init__(self, recorder: TestRecorder, table: bool) -> None:
        self.recorder, self.table = recorder, table

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        results = self.recorder.results
        if not trainer.is_global_zero or not trainer.loggers or results is None:
            return
        for logger in trainer.loggers:
            log_test_results(logger, results, trainer.global_step, self.table)


class WandbRunLife(Callback):
    """The resolved config on every W&B run; the run finished after testing, or marked failed on an error.

    Finished here, not in run.py, so that one failed category of a multirun leaves the next a fresh run.
    """

    def __init__(self, config: dict) -> None:
        self.config = config

    def _runs(self, trainer: Trainer) -> list:
        if not trainer.is_global_zero:
            return []
        return [logger.experiment for logger in trainer.loggers if isinstance(logger, WandbLogger)]

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        for run in self._runs(trainer):
            run.config.update(self.config, allow_val_change=True)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "test":
            for run in self._runs(trainer):
                run.finish()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        for run in self._runs(trainer):
            run.finish(exit_code=1)

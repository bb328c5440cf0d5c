"""Lightning callbacks for people and dashboards: progress, a line per epoch, pictures, the W&B run."""

from __future__ import annotations

import time
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import WandbLogger
from omegaconf import DictConfig, OmegaConf
from rich import get_console
from torch.utils.data import DataLoader

from anomaly_ae.dashboards import draw_image, log_test_results, validation_panel
from anomaly_ae.results import image_curves
from anomaly_ae.scoring import as_float

EPOCH_KEYS = {"train/loss_epoch": "train/loss", "val/loss": "val/loss", "val/pixel_auroc": "val/pixel_auroc",
              "val/image_auroc": "val/image_auroc"}  # fmt: skip


def epoch_line(
    epoch: int, max_epochs: int | None, metrics: dict[str, float], lr: float, seconds: float
) -> str:
    """`epoch 4/55  train/loss 0.0123  val/pixel_auroc 0.912  lr 1.90e-03  12.3 s` (1-based epoch)."""
    of = f"/{max_epochs}" if max_epochs and max_epochs > 0 else ""
    parts = [f"epoch {epoch + 1}{of}"]
    parts += [f"{name} {metrics[key]:.4g}" for key, name in EPOCH_KEYS.items() if key in metrics]
    return "  ".join([*parts, f"lr {lr:.2e}", f"{seconds:.1f} s"])


class ProgressBar(RichProgressBar):
    """Rich's bar with only the running loss and val/pixel_auroc, so that it fits one line."""

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        for key in ("v_num", "train/loss_epoch"):  # the logger's run id; last epoch's loss, printed already
            metrics.pop(key, None)
        if "train/loss_step" in metrics:
            metrics = {"loss": metrics.pop("train/loss_step"), **metrics}
        return metrics


class LogLearningRate(Callback):
    """train/lr every step, under the project's stage/name keys (LearningRateMonitor would say lr-Adam)."""

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        pl_module.log("train/lr", trainer.optimizers[0].param_groups[0]["lr"], on_step=True, on_epoch=False)


class EpochSummary(Callback):
    """One printed line per training epoch; validation metrics only in epochs that validated."""

    def __init__(self) -> None:
        self._start, self._validated = time.perf_counter(), False

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start, self._validated = time.perf_counter(), False

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validated = self._validated or not trainer.sanity_checking

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items() if key in EPOCH_KEYS}
        if not self._validated:  # callback_metrics keep the last validation's values: not this epoch's
            metrics = {key: value for key, value in metrics.items() if not key.startswith("val/")}
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        line = epoch_line(
            trainer.current_epoch, trainer.max_epochs, metrics, lr, time.perf_counter() - self._start
        )
        get_console().print(
            line, highlight=False, markup=False, soft_wrap=True
        )  # the console Rich's progress bar draws on


class ValidationPanel(Callback):
    """Every `every_n_epochs` (at a validation), draw a fixed validation batch to every logger with images."""

    def __init__(self, every_n_epochs: int, images: int) -> None:
        self.every_n_epochs, self.images = every_n_epochs, images
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
        grid = validation_panel(pl_module, images)
        for logger in trainer.loggers:
            draw_image(logger, "val/panel", grid, trainer.global_step)


class TestDashboards(Callback):
    """After testing: ROC/PR curves (W&B, TensorBoard) and the per-image table with overlays (W&B)."""

    def __init__(self, table: bool) -> None:
        self.table = table

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        curves = {}
        if (image := image_curves(pl_module.test_records, metrics)) is not None:
            curves["image"] = image
        if getattr(pl_module, "test_pixel_curves", None):
            curves["pixel"] = pl_module.test_pixel_curves
        loader = trainer.test_dataloaders
        # Every test image, not this rank's share: the records may hold every rank's images.
        every_image = DataLoader(loader.dataset, batch_size=loader.batch_size, collate_fn=loader.collate_fn)
        for logger in trainer.loggers:
            log_test_results(logger, pl_module, every_image, curves, trainer.global_step, self.table)


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


def run_callbacks(cfg: DictConfig) -> list[Callback]:
    """The callbacks `fit` adds to the checkpointing: progress, epoch lines, pictures and the W&B run."""
    logging = cfg.logging
    callbacks = [
        LogLearningRate(),
        ValidationPanel(logging.panel_every_n_epochs, logging.panel_images),
        TestDashboards(logging.test_table),
        WandbRunLife(OmegaConf.to_container(cfg, resolve=True)),
    ]
    if logging.epoch_summary:
        callbacks.append(EpochSummary())
    if cfg.trainer.enable_progress_bar:  # Lightning refuses a progress-bar callback when the bar is off
        callbacks.append(ProgressBar())
    return callbacks

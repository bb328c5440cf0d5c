"""Lightning callbacks for the person at the terminal: a one-line progress bar, a line per epoch, train/lr."""

from __future__ import annotations

import time
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from rich import get_console

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
    """train/lr under the project's stage/name keys (LearningRateMonitor would say lr-Adam).

    Logged only on the steps the loggers write: a float logged is copied to the device, and on a GPU
    that copy waits for the queued work, once per step.
    """

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not trainer._logger_connector.should_update_logs:  # the loggers would not see it on this step
            return
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

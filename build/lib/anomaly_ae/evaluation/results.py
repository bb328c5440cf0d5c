"""The outcome of testing one model, collected from the test steps as one object for reporting."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from anomaly_ae.evaluation.thresholds import pixel_operating_points

RECORD_KEYS = ("path", "label", "defect_type", "score", "predicted")


@dataclass
class TestResults:
    """Metrics, one record per test image (dataset order) and what the pictures need, at the model's size.

    images, reconstructions: (N, C, S, S) uint8; maps: (N, S, S) float32; masks: (N, S, S) bool or None.
    """

    __test__ = False  # not a pytest test class, despite the name

    metrics: dict[str, float]
    records: list[dict]
    images: Tensor
    reconstructions: Tensor
    maps: Tensor
    masks: Tensor | None
    thresholds: dict[str, Any] = field(default_factory=dict)
    pixel_curves: dict | None = None


def _uint8(images: Tensor) -> Tensor:
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


class TestRecorder(Callback):
    """Collects the test steps' outputs; after `trainer.test`, `results` holds the run's TestResults.

    Every rank collects its share and rank 0 gathers them (DDP), so reporting sees every test image once.
    The model runs once over the test set: pictures reuse the maps and reconstructions kept here.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self) -> None:
        self.results: TestResults | None = None
        self._parts: list[dict] = []
        self._pixel_points: dict | None = None

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._parts, self._pixel_points, self.results = [], None, None

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        size = outputs["maps"].shape[-2:]
        masks = None
        if "mask" in batch and pl_module.hparams.has_masks:
            masks = (
                torch.nn.functional.interpolate(batch["mask"].float(), size=size, mode="nearest")[:, 0] > 0
            )
        self._parts.append({
            "records": [
                {"path": path, "label": int(label), "defect_type": defect, "score": float(score),
                 "predicted": int(predicted)}
                for path, label, defect, score, predicted in zip(
                    batch["path"], batch["label"].tolist(), batch["defect_type"], outputs["scores"].tolist(),
                    outputs["predicted"].tolist(), strict=True)
            ],
            "images": _uint8(batch["image"]), "reconstructions": _uint8(outputs["reconstructions"]),
            "maps": outputs["maps"].detach().float().cpu(), "masks": None if masks is None else masks.cpu(),
        })  # fmt: skip

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Callbacks run before the module's epoch end, which resets the metric states read here.
        if pl_module.hparams.has_masks:
            self._pixel_points = pixel_operating_points(pl_module.test_pixel)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        parts = self._parts
        if trainer.world_size > 1:  # every rank's share (strings too), so rank 0 reports every image
            gathered: list[list[dict]] = [[] for _ in range(trainer.world_size)]
            torch.distributed.all_gather_object(gathered, parts)
            parts = [part for rank in gathered for part in rank]
        order = {sample.path: i for i, sample in enumerate(trainer.test_dataloaders.dataset.samples)}
        records = [record for part in parts for record in part["records"]]
        rank = sorted(range(len(records)), key=lambda i: order[records[i]["path"]])  # ranks interleave
        metrics = {
            key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("test/")
        }

        def stacked(key: str) -> Tensor | None:
            if any(part[key] is None for part in parts):
                return None
            return torch.cat([part[key] for part in parts])[rank]

        self.results = TestResults(
            metrics=metrics,
            records=[records[i] for i in rank],
            images=stacked("images"),
            reconstructions=stacked("reconstructions"),
            maps=stacked("maps"),
            masks=stacked("masks"),
            thresholds={
                "image": float(pl_module.image_threshold),
                "pixel": float(pl_module.pixel_threshold),
                "fitted_by": dict(pl_module.threshold_source),
            },
            pixel_curves=None if self._pixel_points is None else pixel_curves(self._pixel_points, metrics),
        )
        self._parts = []


def pixel_curves(points: dict[str, Tensor], metrics: dict[str, float], limit: int = 2000) -> dict:
    """ROC and PR curves from pixel operating points, thinned to about `limit` points for plotting."""
    tp, fp = points["tp"], points["fp"]
    step = max(1, len(tp) // limit)
    tp, fp = tp[::step], fp[::step]
    return {
        "fpr": (fp / fp[-1].clamp_min(1)).numpy(),
        "tpr": (tp / tp[-1].clamp_min(1)).numpy(),
        "precision": (tp / (tp + fp).clamp_min(1)).numpy(),
        "recall": (tp / tp[-1].clamp_min(1)).numpy(),
        "auroc": metrics.get("test/pixel_auroc", float("nan")),
        "ap": metrics.get("test/pixel_ap", float("nan")),
    }

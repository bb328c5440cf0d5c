"""AnomalyAE: the LightningModule that wires autoencoder, corruption, loss and metrics."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics.classification import BinaryStatScores
from torchmetrics.utilities import dim_zero_cat

from anomaly_ae.corruption import StructuredCorruption
from anomaly_ae.metrics import ImageMetrics, PixelMetrics
from anomaly_ae.model import architecture
from anomaly_ae.scoring import anomaly_map, as_float, image_score, reconstruction_loss
from anomaly_ae.thresholds import f1_and_iou, fit_image_threshold, fit_pixel_threshold, pixel_curves

VAL_CORRUPTION_SEED = 12345  # fixed: validation sees the same pseudo-defects every epoch
DEFAULT_EVAL = {"resolution": "mask", "threshold": "f1", "quantile": 0.99, "max_fpr": 0.3}


def augment(
    images: Tensor, hflip: bool, vflip: bool, rot90: bool, generator: torch.Generator | None = None
) -> Tensor:
    """Random flips / right-angle rotations per image, batched on the images' device."""
    n, device, gen = len(images), images.device, generator
    if hflip:
        images = torch.where(
            torch.rand(n, 1, 1, 1, device=device, generator=gen) < 0.5, images.flip(-1), images
        )
    if vflip:
        images = torch.where(
            torch.rand(n, 1, 1, 1, device=device, generator=gen) < 0.5, images.flip(-2), images
        )
    if rot90 and images.shape[-1] == images.shape[-2]:
        turns = torch.randint(4, (n,), device=device, generator=gen)
        images = images.clone()
        for k in (1, 2, 3):
            images[turns == k] = images[turns == k].rot90(k, dims=(-2, -1))
    return images


class AnomalyAE(L.LightningModule):
    """Self-supervised autoencoder: corrupt normal images, reconstruct the clean ones.

    Args are plain config dicts so that a checkpoint carries everything needed to rebuild the model.
        model: kwargs of the autoencoder, with `_target_`.
        corruption: kwargs of the training corruption, with `_target_`; None trains a plain autoencoder.
        optim: lr, betas, weight_decay, scheduler ("cosine" or "none"), warmup_steps.
        score: sigma (px), reduction, topk.
        loss: clean_weight (None: plain MSE over the image).
        augment: hflip, vflip, rot90 applied on the device during training.
        eval: resolution ("mask" or "model"), threshold ("f1" or "quantile"), quantile, max_fpr.
        compile: run the autoencoder through torch.compile (same weights and state_dict keys).
    """

    def __init__(
        self,
        model: dict,
        corruption: dict | None,
        optim: dict,
        score: dict,
        loss: dict,
        augment: dict,
        in_channels: int,
        eval: dict | None = None,
        image_size: int | None = None,
        has_masks: bool = True,
        seed: int = 0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        eval = {**DEFAULT_EVAL, **(eval or {})}
        self.save_hyperparameters()
        self.hparams.eval = eval
        self.model = instantiate(architecture(model), in_channels=in_channels)
        self.corruption = instantiate(corruption) if corruption else None
        # Validation always uses the default corruption, so that checkpoints and thresholds of every
        # training objective (plain AE included) are selected on the same pseudo-defects.
        self.val_corruption = StructuredCorruption()
        self.val_image, self.val_pixel = ImageMetrics(), PixelMetrics(eval["max_fpr"])
        self.test_image, self.test_pixel = ImageMetrics(), PixelMetrics(eval["max_fpr"])
        self.image_stats, self.pixel_stats = BinaryStatScores(), BinaryStatScores()
        self.register_buffer("image_threshold", torch.tensor(math.nan))
        self.register_buffer("pixel_threshold", torch.tensor(math.nan))
        self.threshold_source = {"image": "not fitted", "pixel": "not fitted"}
        self.test_records: list[dict] = []
        self.test_pixel_curves: dict | None = None
        self._generator: torch.Generator | None = None
        self._resumed_generator_state: Tensor | None = None

    def configure_model(self) -> None:
        # nn.Module.compile compiles in place, so checkpoints keep the plain state_dict keys.
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.model.compile()
            self._compiled = True

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) images in [0, 1] -> (anomaly maps (N, H, W), image scores (N,))."""
        return self.score(images, self.model(images))

    def score(self, images: Tensor, reconstructions: Tensor) -> tuple[Tensor, Tensor]:
        maps = anomaly_map(images, reconstructions, self.hparams.score["sigma"])
        return maps, image_score(maps, self.hparams.score["reduction"], self.hparams.score["topk"])

    def on_train_start(self) -> None:
        # Each DDP rank draws its own corruptions, reproducibly; a resumed run continues its stream.
        seed = self.hparams.seed * 1000 + self.global_rank
        self._generator = torch.Generator(device=self.device).manual_seed(seed)
        if self._resumed_generator_state is not None:
            self._generator.set_state(self._resumed_generator_state)
            self._resumed_generator_state = None

    def on_validation_epoch_start(self) -> None:
        self._val_generator = torch.Generator(device=self.device).manual_seed(VAL_CORRUPTION_SEED)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        images = as_float(batch["image"])
        trainer = self._trainer
        training = trainer is not None and trainer.training
        validating = trainer is not None and (trainer.validating or trainer.sanity_checking)
        target, corrupted, mask = images, images, torch.zeros_like(images[:, :1])
        if training:
            # The checkpointed generator, not the global RNG: a resumed run draws as an uninterrupted one.
            images = target = corrupted = augment(images, **self.hparams.augment, generator=self._generator)
            if self.corruption is not None:
                target = self.corruption.anchor_noise(images, self._generator)
                corrupted, mask = self.corruption(target, self._generator)
        elif validating:
            corrupted, mask = self.val_corruption(images, self._val_generator)
        batch.update(image=images, input=corrupted, target=target, corruption_mask=mask)
        return batch

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        reconstructions = self.model(batch["input"])
        loss = self._loss(reconstructions, batch)
        if not torch.isfinite(loss):
            self._stop_on_non_finite(loss)
        self.log(
            "train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(reconstructions)
        )
        return loss

    def _stop_on_non_finite(self, loss: Tensor) -> None:
        """Stop with the step and the last checkpoint to resume from, instead of training on NaNs."""
        paths = [c.best_model_path for c in self.trainer.checkpoint_callbacks]  # [best, last]
        last = next((path for path in reversed(paths) if path), "")
        where = f"the last checkpoint is {last}" if last else "no checkpoint has been written yet"
        raise FloatingPointError(
            f"training loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}); "
            f"{where}. Lower optim.lr or set trainer.gradient_clip_val, "
            "then continue with resume=<checkpoint>."
        )

    def _loss(self, reconstructions: Tensor, batch: dict) -> Tensor:
        clean_weight = self.hparams.loss["clean_weight"]
        return reconstruction_loss(reconstructions, batch["target"], batch["corruption_mask"], clean_weight)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        reconstructions = self.model(batch["input"])
        self.log("val/loss", self._loss(reconstructions, batch), batch_size=len(reconstructions))
        maps, scores = self.score(batch["input"], reconstructions)
        corrupted = batch["corruption_mask"].flatten(1).any(dim=1)
        self.val_image.update(scores, corrupted)
        self.val_pixel.update(maps, batch["corruption_mask"][:, 0])

    def on_validation_epoch_end(self) -> None:
        image, pixel = self.val_image.compute(), self.val_pixel.compute()
        values = {f"val/{k}": v for k, v in (image | pixel).items() if k != "image_f1_threshold"}
        self.log("val/pixel_auroc", values.pop("val/pixel_auroc"), prog_bar=True)  # selects the checkpoint
        self.log_dict(values)
        with self.val_image.sync_context():  # every rank's scores; ranks may hold different counts
            scores, flags = dim_zero_cat(self.val_image.scores), dim_zero_cat(self.val_image.labels).bool()
        method, quantile = self.hparams.eval["threshold"], self.hparams.eval["quantile"]
        image_threshold, self.threshold_source["image"] = fit_image_threshold(scores, flags, method, quantile)
        pixel_threshold, self.threshold_source["pixel"] = fit_pixel_threshold(
            self.val_pixel, method, quantile
        )
        for level, source in self.threshold_source.items():
            if "fallback" in source and not self.trainer.sanity_checking:
                rank_zero_warn(f"{level} threshold: {source}", category=UserWarning)
        self.image_threshold.fill_(image_threshold)
        self.pixel_threshold.fill_(pixel_threshold)
        for metric in (self.val_image, self.val_pixel):
            metric.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        maps, scores = self(batch["image"])
        labels = batch["label"].long()
        self.test_image.update(scores, labels)
        self.image_stats.update((scores >= self.image_threshold).long(), labels)
        if self.hparams.has_masks:
            masks = batch["mask"][:, 0]
            if masks.shape[-2:] != maps.shape[-2:]:  # eval.resolution=mask: upsample the map, not the mask
                maps = F.interpolate(maps[:, None], size=masks.shape[-2:], mode="bilinear")[:, 0]
            self.test_pixel.update(maps, masks)
            self.pixel_stats.update((maps >= self.pixel_threshold).long().flatten(), masks.long().flatten())
        for i, score in enumerate(scores.tolist()):
            self.test_records.append(
                {"path": batch["path"][i], "label": int(labels[i]), "defect_type": batch["defect_type"][i],
                 "score": score, "predicted": int(score >= float(self.image_threshold))}
            )  # fmt: skip

    def on_test_epoch_start(self) -> None:
        self.test_records = []

    def on_test_epoch_end(self) -> None:
        values = self.test_image.compute()
        image_f1, _ = f1_and_iou(self.image_stats.compute()[[0, 1, 3]])
        values |= {"image_f1": image_f1, "image_threshold": self.image_threshold}
        if self.hparams.has_masks:
            pixel = self.test_pixel.compute()
            self.test_pixel_curves = pixel_curves(self.test_pixel, pixel)
            values |= pixel
            pixel_f1, pixel_iou = f1_and_iou(self.pixel_stats.compute()[[0, 1, 3]])
            values |= {"pixel_f1": pixel_f1, "pixel_iou": pixel_iou, "pixel_threshold": self.pixel_threshold}
        self.log_dict({f"test/{k}": float(v) for k, v in values.items() if k != "image_f1_threshold"})
        if self.trainer.world_size > 1:  # every rank's records (strings too), so rank 0 writes scores.csv
            gathered: list[list[dict]] = [[] for _ in range(self.trainer.world_size)]
            torch.distributed.all_gather_object(gathered, self.test_records)
            self.test_records = [record for records in gathered for record in records]
        for metric in (self.test_image, self.test_pixel, self.image_stats, self.pixel_stats):
            metric.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["threshold_source"] = dict(self.threshold_source)
        if self._generator is not None:
            checkpoint["corruption_generator"] = self._generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.threshold_source = dict(checkpoint.get("threshold_source", self.threshold_source))
        self._resumed_generator_state = checkpoint.get("corruption_generator")

    def configure_optimizers(self) -> Any:
        optim = self.hparams.optim
        # Linear scaling rule (Goyal et al. 2017): N processes see N times the batch per step.
        lr = optim["lr"] * (self.trainer.world_size if optim.get("scale_lr_with_world_size") else 1)
        optimizer = torch.optim.Adam(
            self.parameters(), lr=lr, betas=tuple(optim["betas"]), weight_decay=optim["weight_decay"]
        )
        if optim["scheduler"] == "none":
            return optimizer
        if optim["scheduler"] != "cosine":
            raise ValueError(f"optim.scheduler={optim['scheduler']!r} is not one of ('cosine', 'none')")
        total = max(1, self.trainer.estimated_stepping_batches)
        warmup = min(optim["warmup_steps"], total // 10)

        def factor(step: int) -> float:  # linear warm-up, then cosine decay to zero
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

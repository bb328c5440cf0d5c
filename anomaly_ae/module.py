"""AnomalyAE: the LightningModule that wires autoencoder, corruption, loss and metrics."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from torch import Tensor
from torchmetrics.classification import BinaryAUROC

from anomaly_ae.scoring import anomaly_map, as_float, image_score, reconstruction_loss

VAL_CORRUPTION_SEED = 12345  # fixed: validation sees the same pseudo-defects every epoch


def augment(images: Tensor, hflip: bool, vflip: bool, rot90: bool) -> Tensor:
    """Random flips / right-angle rotations per image, batched on the images' device."""
    n = len(images)
    if hflip:
        images = torch.where(torch.rand(n, 1, 1, 1, device=images.device) < 0.5, images.flip(-1), images)
    if vflip:
        images = torch.where(torch.rand(n, 1, 1, 1, device=images.device) < 0.5, images.flip(-2), images)
    if rot90 and images.shape[-1] == images.shape[-2]:
        turns = torch.randint(4, (n,), device=images.device)
        images = images.clone()
        for k in (1, 2, 3):
            images[turns == k] = images[turns == k].rot90(k, dims=(-2, -1))
    return images


class AnomalyAE(L.LightningModule):
    """Self-supervised autoencoder: corrupt normal images, reconstruct the clean ones.

    Args are plain config dicts so that a checkpoint carries everything needed to rebuild the model.
        model: kwargs of the autoencoder, with `_target_`.
        corruption: kwargs of the training corruption, with `_target_`; None trains a plain autoencoder.
        optim: lr, weight_decay, betas, scheduler ("cosine" or "none").
        score: sigma (px), reduction, topk.
        loss: clean_weight (None: plain MSE over the image).
        augment: hflip, vflip, rot90 applied on the device during training.
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
        has_masks: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = instantiate(model, in_channels=in_channels)
        self.corruption = instantiate(corruption) if corruption else None
        self.val_pixel_auroc = BinaryAUROC(thresholds=None)
        self.test_image_auroc = BinaryAUROC(thresholds=None)
        self.test_pixel_auroc = BinaryAUROC(thresholds=None)
        self._generator: torch.Generator | None = None

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) images in [0, 1] -> (anomaly maps (N, H, W), image scores (N,))."""
        maps = anomaly_map(images, self.model(images), self.hparams.score["sigma"])
        return maps, image_score(maps, self.hparams.score["reduction"], self.hparams.score["topk"])

    def _corruption_generator(self, seed: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(seed)

    def on_train_start(self) -> None:
        # Each DDP rank draws its own corruptions, reproducibly.
        self._generator = self._corruption_generator(self.hparams.seed * 1000 + self.global_rank)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        images = as_float(batch["image"])
        trainer = self._trainer
        training = trainer is not None and trainer.training
        validating = trainer is not None and (trainer.validating or trainer.sanity_checking)
        if training:
            images = augment(images, **self.hparams.augment)
        if (training or validating) and self.corruption is not None:
            generator = self._generator if training else self._val_generator
            target = self.corruption.anchor_noise(images, generator)
            corrupted, mask = self.corruption(target, generator)
        else:
            target, corrupted, mask = images, images, torch.zeros_like(images[:, :1])
        batch.update(image=images, input=corrupted, target=target, corruption_mask=mask)
        return batch

    def on_validation_epoch_start(self) -> None:
        self._val_generator = self._corruption_generator(VAL_CORRUPTION_SEED)

    def _step(self, batch: dict, stage: str) -> Tensor:
        reconstructions = self.model(batch["input"])
        loss = reconstruction_loss(
            reconstructions, batch["target"], batch["corruption_mask"], self.hparams.loss["clean_weight"]
        )
        batch_size = len(reconstructions)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", on_epoch=True, batch_size=batch_size)
        if stage == "train":
            return loss
        maps = anomaly_map(batch["input"], reconstructions, self.hparams.score["sigma"])
        if stage == "val":  # detecting the fixed synthetic regions: a test-free selection signal
            self.val_pixel_auroc.update(maps.flatten(), batch["corruption_mask"].flatten().long())
            self.log(
                "val/pixel_auroc", self.val_pixel_auroc, prog_bar=True, on_epoch=True, batch_size=batch_size
            )
        else:
            scores = image_score(maps, self.hparams.score["reduction"], self.hparams.score["topk"])
            self.test_image_auroc.update(scores, batch["label"].long())
            self.log("test/image_auroc", self.test_image_auroc, on_epoch=True, batch_size=batch_size)
            if self.hparams.has_masks:
                self.test_pixel_auroc.update(maps.flatten(), batch["mask"].flatten().long())
                self.log("test/pixel_auroc", self.test_pixel_auroc, on_epoch=True, batch_size=batch_size)
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        optim = self.hparams.optim
        optimizer = torch.optim.Adam(
            self.parameters(), lr=optim["lr"], betas=tuple(optim["betas"]), weight_decay=optim["weight_decay"]
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

"""AnomalyAE: the LightningModule that wires scorer, corruption, loss and metrics; it does steps only."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics.classification import BinaryStatScores

from anomaly_ae.corruption.augment import augment
from anomaly_ae.corruption.structured import StructuredCorruption
from anomaly_ae.data.images import as_float
from anomaly_ae.evaluation.metrics import ImageMetrics, PixelMetrics
from anomaly_ae.evaluation.thresholds import f1_and_iou, fit_thresholds
from anomaly_ae.model.autoencoder import architecture
from anomaly_ae.model.loss import reconstruction_loss
from anomaly_ae.model.scorer import AnomalyScorer
from anomaly_ae.model.scoring import residual_sums
from anomaly_ae.model.segmenter import segmentation_loss
from anomaly_ae.training.speed import adam

VAL_CORRUPTION_SEED = 12345  # fixed: validation sees the same pseudo-defects every epoch
DEFAULT_EVAL = {"resolution": "mask", "threshold": "f1", "quantile": 0.99, "max_fpr": 0.3}


class AnomalyAE(L.LightningModule):
    """Self-supervised autoencoder: corrupt normal images, reconstruct the clean ones.

    Args are plain config dicts so that a checkpoint carries everything needed to rebuild the model.
        model: kwargs of the autoencoder, with `_target_`.
        corruption: kwargs of the training corruption, with `_target_`; None trains a plain autoencoder.
        optim: lr, betas, weight_decay, scheduler ("cosine" or "none"), warmup_steps.
        score: the AnomalyScorer's options (sigma, reduction, topk, normalize, flip_average, residual, and
            the segmenter's size; a learned residual adds the segmenter's focal loss to the objective).
        loss: clean_weight (None: plain MSE over the image), gradient_weight (0: no edge term).
        augment: hflip, vflip, rot90 applied on the device during training.
        eval: resolution ("mask" or "model"), threshold ("f1" or "quantile"), quantile, max_fpr.
        compile: run the autoencoder through torch.compile (same weights and state_dict keys).
        channels_last: keep the scorer's weights in channels_last memory format (faster convs on GPUs).
        sync_every_n_steps: check the loss for NaN/inf every this many steps (and at each epoch's last
            step), so that a GPU is not made to wait for the host after every step.

    test_step returns each batch's scores, maps and reconstructions; `evaluation.results.TestRecorder`
    collects them into the run's TestResults, so nothing is read out of this module after testing.
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
        channels_last: bool = False,
        sync_every_n_steps: int = 1,
    ) -> None:
        super().__init__()
        eval = {**DEFAULT_EVAL, **(eval or {})}
        self.save_hyperparameters()
        self.hparams.eval = eval
        autoencoder = instantiate(architecture(model), in_channels=in_channels)
        self.scorer = AnomalyScorer.from_config(autoencoder, score, image_size)
        self.corruption = instantiate(corruption) if corruption else None
        if self.scorer.segmenter is not None and self.corruption is None:
            raise ValueError(
                f"score.residual={score['residual']} trains its segmenter on the corruption's masks, but "
                "corruption=none: choose a corruption or another score.residual"
            )
        # Validation always uses the default corruption, so that checkpoints and thresholds of every
        # training objective (plain AE included) are selected on the same pseudo-defects.
        self.val_corruption = StructuredCorruption()
        self.val_image, self.val_pixel = ImageMetrics(), PixelMetrics(eval["max_fpr"])
        self.test_image, self.test_pixel = ImageMetrics(), PixelMetrics(eval["max_fpr"])
        self.image_stats, self.pixel_stats = BinaryStatScores(), BinaryStatScores()
        self.register_buffer("image_threshold", torch.tensor(math.nan))
        self.register_buffer("pixel_threshold", torch.tensor(math.nan))
        self.threshold_source = {"image": "not fitted", "pixel": "not fitted"}
        self._generator: torch.Generator | None = None
        self._resumed_generator_state: Tensor | None = None
        self._residual_sums: Tensor | None = None  # (3, [K,] S, S) float64: count, sum, sum of squares
        self._pending_residuals: list[tuple[Tensor, Tensor]] = []  # validation residuals and masks
        self._finite: Tensor | None = None  # all losses since the last check finite, kept on the device

    @property
    def autoencoder(self) -> torch.nn.Module:
        return self.scorer.autoencoder

    def configure_model(self) -> None:
        # nn.Module.compile compiles in place, so checkpoints keep the plain state_dict keys.
        if self.hparams.compile and not getattr(self, "_compiled", False):
            self.autoencoder.compile()
            self._compiled = True
        if self.hparams.channels_last:  # moved to the device later, which keeps the memory format
            self.scorer.to(memory_format=torch.channels_last)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, H, W) images in [0, 1] -> (anomaly maps (N, H, W), image scores (N,))."""
        return self.scorer(images)

    def on_train_start(self) -> None:
        # Each DDP rank draws its own corruptions, reproducibly; a resumed run continues its stream.
        seed = self.hparams.seed * 1000 + self.global_rank
        self._generator = torch.Generator(device=self.device).manual_seed(seed)
        if self._resumed_generator_state is not None:
            self._generator.set_state(self._resumed_generator_state)
            self._resumed_generator_state = None

    def on_validation_epoch_start(self) -> None:
        self._val_generator = torch.Generator(device=self.device).manual_seed(VAL_CORRUPTION_SEED)
        self._residual_sums, self._pending_residuals = None, []

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
        loss, segmentation = self.training_loss(batch)
        if segmentation is not None:
            self.log("train/segmentation_loss", segmentation, on_step=False, on_epoch=True,
                     batch_size=len(batch["input"]))  # fmt: skip
        every = self.hparams.sync_every_n_steps
        finite = torch.isfinite(loss) if self._finite is None else self._finite & torch.isfinite(loss)
        self._finite = finite
        if every == 1 or (batch_idx + 1) % every == 0 or batch_idx + 1 == self.trainer.num_training_batches:
            self._finite = None
            if not finite:  # the one host synchronisation
                self._stop_on_non_finite(loss, every)
        self.log(
            "train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["input"])
        )
        return loss

    def training_loss(self, batch: dict) -> tuple[Tensor, Tensor | None]:
        """The loss of one transferred batch: reconstruction (+ segmentation), and the segmentation part."""
        reconstructions = self.autoencoder(batch["input"])
        loss = self._loss(reconstructions, batch)
        if self.scorer.segmenter is None:
            return loss, None
        # Detached: the segmenter learns to read the autoencoder's errors without reshaping them, so
        # the reconstruction objective (and the residual components beside it) stay as without it.
        logits = self.scorer.segmenter(batch["input"], reconstructions.detach())
        segmentation = segmentation_loss(logits, batch["corruption_mask"][:, 0])
        return loss + segmentation, segmentation

    def _stop_on_non_finite(self, loss: Tensor, every: int = 1) -> None:
        """Stop with the step and the last checkpoint to resume from, instead of training on NaNs."""
        paths = [c.best_model_path for c in self.trainer.checkpoint_callbacks]  # [best, last]
        last = next((path for path in reversed(paths) if path), "")
        where = f"the last checkpoint is {last}" if last else "no checkpoint has been written yet"
        # Checked every `every` steps: the first non-finite loss lies in the steps since the last check.
        checked = f", non-finite at least once in the last {every} steps" if every > 1 else ""
        epoch = f"epoch {self.current_epoch}{checked}"
        raise FloatingPointError(
            f"training loss is {loss.item()} at step {self.global_step} ({epoch}); "
            f"{where}. Lower optim.lr or set trainer.gradient_clip_val, "
            "then continue with resume=<checkpoint>."
        )

    def _loss(self, reconstructions: Tensor, batch: dict) -> Tensor:
        loss = self.hparams.loss  # gradient_weight: absent from checkpoints written before it existed
        return reconstruction_loss(
            reconstructions, batch["target"], batch["corruption_mask"], loss["clean_weight"],
            loss.get("gradient_weight", 0.0),
        )  # fmt: skip

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        reconstructions = self.autoencoder(batch["input"])
        self.log("val/loss", self._loss(reconstructions, batch), batch_size=len(reconstructions))
        masks = batch["corruption_mask"][:, 0]
        if self.scorer.normalize == "none" or self.trainer.sanity_checking:
            self._update_val_metrics(self.scorer.anomaly_map(batch["input"], reconstructions), masks)
            return
        self._accumulate_clean_residuals(batch["image"])
        # Scored at the epoch's end, once this validation's statistics are fitted: metrics and thresholds
        # then use the statistics the checkpoint saves. Costs (N_val, S, S) floats per rank until then.
        self._pending_residuals.append((self.scorer.residual(batch["input"], reconstructions), masks))

    def _update_val_metrics(self, maps: Tensor, masks: Tensor) -> None:
        """(N, H, W) maps of corrupted validation images and their (N, H, W) corruption masks."""
        self.val_image.update(self.scorer.image_score(maps), masks.flatten(1).any(dim=1))
        self.val_pixel.update(maps, masks)

    def _accumulate_clean_residuals(self, images: Tensor) -> None:
        """Per-pixel sums of the residual of clean validation images (never test data), for normalisation."""
        sums = residual_sums(self.scorer.residual(images))
        self._residual_sums = sums if self._residual_sums is None else self._residual_sums + sums

    def on_validation_epoch_end(self) -> None:
        if self._residual_sums is not None:  # before the metrics: they score with the new statistics
            count, total, total_sq = self.trainer.strategy.reduce(self._residual_sums, reduce_op="sum")
            self.scorer.fit_normalization(total, total_sq, float(count.flatten()[0]))
            for residual, masks in self._pending_residuals:
                self._update_val_metrics(self.scorer.residual_to_map(residual), masks)
            self._residual_sums, self._pending_residuals = None, []
        image, pixel = self.val_image.compute(), self.val_pixel.compute()
        values = {f"val/{k}": v for k, v in (image | pixel).items() if k != "image_f1_threshold"}
        self.log("val/pixel_auroc", values.pop("val/pixel_auroc"), prog_bar=True)  # selects the checkpoint
        self.log_dict(values)
        image_threshold, pixel_threshold, self.threshold_source = fit_thresholds(
            self.val_image, self.val_pixel, self.hparams.eval["threshold"], self.hparams.eval["quantile"]
        )
        for level, source in self.threshold_source.items():
            if "fallback" in source and not self.trainer.sanity_checking:
                rank_zero_warn(f"{level} threshold: {source}", category=UserWarning)
        self.image_threshold.fill_(image_threshold)
        self.pixel_threshold.fill_(pixel_threshold)
        for metric in (self.val_image, self.val_pixel):
            metric.reset()

    def test_step(self, batch: dict, batch_idx: int) -> dict[str, Tensor]:
        images = batch["image"]
        reconstructions = self.autoencoder(images)
        maps = self.scorer.anomaly_map(images, reconstructions)
        scores, labels = self.scorer.image_score(maps), batch["label"].long()
        self.test_image.update(scores, labels)
        self.image_stats.update((scores >= self.image_threshold).long(), labels)
        if self.hparams.has_masks:
            masks, test_maps = batch["mask"][:, 0], maps
            if masks.shape[-2:] != maps.shape[-2:]:  # eval.resolution=mask: upsample the map, not the mask
                test_maps = F.interpolate(maps[:, None], size=masks.shape[-2:], mode="bilinear")[:, 0]
            self.test_pixel.update(test_maps, masks)
            self.pixel_stats.update(
                (test_maps >= self.pixel_threshold).long().flatten(), masks.long().flatten()
            )
        return {"scores": scores, "predicted": scores >= self.image_threshold, "maps": maps,
                "reconstructions": reconstructions}  # fmt: skip

    def on_test_epoch_end(self) -> None:
        values = self.test_image.compute()
        image_f1, _ = f1_and_iou(self.image_stats.compute()[[0, 1, 3]])
        values |= {"image_f1": image_f1, "image_threshold": self.image_threshold}
        if self.hparams.has_masks:
            values |= self.test_pixel.compute()
            pixel_f1, pixel_iou = f1_and_iou(self.pixel_stats.compute()[[0, 1, 3]])
            values |= {"pixel_f1": pixel_f1, "pixel_iou": pixel_iou, "pixel_threshold": self.pixel_threshold}
        self.log_dict({f"test/{k}": float(v) for k, v in values.items() if k != "image_f1_threshold"})
        for metric in (self.test_image, self.test_pixel, self.image_stats, self.pixel_stats):
            metric.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["threshold_source"] = dict(self.threshold_source)
        if self._generator is not None:
            checkpoint["corruption_generator"] = self._generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        upgrade_state_dict(checkpoint["state_dict"])
        self.threshold_source = dict(checkpoint.get("threshold_source", self.threshold_source))
        self._resumed_generator_state = checkpoint.get("corruption_generator")

    def configure_optimizers(self) -> Any:
        optim = self.hparams.optim
        # Linear scaling rule (Goyal et al. 2017): N processes see N times the batch per step.
        lr = optim["lr"] * (self.trainer.world_size if optim.get("scale_lr_with_world_size") else 1)
        optimizer = adam(
            self.parameters(), bool(optim.get("fused")), lr=lr, betas=tuple(optim["betas"]),
            weight_decay=optim["weight_decay"],
        )  # fmt: skip
        if optim["scheduler"] == "none":
            return optimizer
        if optim["scheduler"] != "cosine":
            raise ValueError(f"optim.scheduler={optim['scheduler']!r} is not one of ('cosine', 'none')")
        total = max(1, self.trainer.estimated_stepping_batches)
        warmup = min(optim["warmup_steps"], total // 10)
        # With trainer.max_time the run may end on the clock before its last step: the cosine then follows
        # whichever budget is further spent, so a run cut by max_time still ends annealed.
        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)

        def factor(step: int) -> float:  # linear warm-up, then cosine decay to zero
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            if timer is not None:
                elapsed = timer.time_elapsed("train")
                progress = max(progress, elapsed / max(1e-9, elapsed + timer.time_remaining("train")))
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def upgrade_state_dict(state: dict) -> None:
    """Rename, in place, the keys of checkpoints written before the autoencoder moved into the scorer."""
    for key in [key for key in state if key.startswith("model.")]:
        state["scorer.autoencoder." + key.removeprefix("model.")] = state.pop(key)

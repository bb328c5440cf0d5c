"""Score and loss options through the real config: pixel normalisation, flip averaging, the edge loss."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from anomaly_ae.cli.train import build_module, fit
from anomaly_ae.evaluation.thresholds import fit_image_threshold
from anomaly_ae.inference.loading import load_module, load_scorer
from anomaly_ae.model.scoring import residual_map
from anomaly_ae.model.segmenter import segmentation_loss
from anomaly_ae.training.module import VAL_CORRUPTION_SEED
from tests.helpers import compose_config, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fit_with_pixel_normalisation_saves_the_clean_validation_statistics(mvtec_root, tmp_path):
    overrides = tiny_overrides(mvtec_root, tmp_path / "run") + [
        "+trainer.limit_train_batches=2",
        "trainer.max_epochs=2",
        "score.normalize=pixel",
        "score.flip_average=true",
        "score.residual=squared_and_gradient",  # two formula components, computed by hand below
    ]
    cfg = compose_config(overrides)
    metrics = fit(cfg)
    assert 0 <= metrics["test/image_auroc"] <= 1 and 0 <= metrics["test/pixel_auroc"] <= 1
    module = load_module(tmp_path / "run/checkpoints/last.ckpt")
    scorer = module.scorer
    mean, std = scorer.residual_mean, scorer.residual_std
    assert module.hparams.score["normalize"] == "pixel" and scorer.flip_average
    assert module.hparams.score["residual"] == "squared_and_gradient"  # one pair of statistics per component
    assert mean.shape == std.shape == (2, 32, 32)
    assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    assert mean.min() > 0 and not torch.equal(std, torch.ones_like(std))  # fitted, not the initial 0 and 1

    # They are the statistics of the clean validation images under the saved weights (the last validation
    # ran after the last training step), computed here by hand from the validation split.
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    with torch.no_grad():
        batches = [module.on_after_batch_transfer(batch, 0)["image"] for batch in datamodule.val_dataloader()]
        residual = scorer.residual(torch.cat(batches)).double()  # (6, 2, 32, 32): 6 clean validation images
    assert len(residual) == 6
    assert torch.allclose(mean, residual.mean(0).float(), rtol=1e-4, atol=1e-7)
    expected_std = residual.std(0, correction=0).float()
    unclamped = expected_std > 0.01 * expected_std.mean(dim=(-2, -1), keepdim=True)  # floor per component
    assert torch.allclose(std[unclamped], expected_std[unclamped], rtol=1e-3, atol=1e-7)

    # The validation's threshold was fitted on maps scored with these same statistics, not older ones:
    # refitting it from the saved scorer on the same pseudo-defects gives the saved value.
    generator = torch.Generator().manual_seed(VAL_CORRUPTION_SEED)
    with torch.no_grad():
        corrupted = [module.val_corruption(images, generator) for images in batches]
        scores = torch.cat([scorer(images)[1] for images, _ in corrupted])
    flags = torch.cat([mask.flatten(1).any(dim=1) for _, mask in corrupted])
    threshold, source = fit_image_threshold(scores, flags, "f1", 0.99)
    assert source.startswith("f1") and float(module.image_threshold) == pytest.approx(threshold, rel=1e-5)


@pytest.mark.parametrize("weight", [0.0, 1.0])
def test_loss_gradient_weight_reaches_the_training_loss(mvtec_root, tmp_path, weight):
    # The module that train builds from the composed config, scoring a blurred reconstruction of a batch.
    cfg = compose_config([*tiny_overrides(mvtec_root, tmp_path), f"loss.gradient_weight={weight}"])
    data = SimpleNamespace(augment={}, channels=3, image_size=32, has_masks=True)
    module = build_module(cfg, data)
    targets = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    blurred = torch.nn.functional.avg_pool2d(targets, 3, stride=1, padding=1, count_include_pad=False)
    loss = module._loss(blurred, {"target": targets, "corruption_mask": torch.zeros(2, 1, 32, 32)})
    mse = (blurred - targets).pow(2).mean().item()
    edges = residual_map(targets, blurred, "gradient").mean().item()
    assert edges > 0.1  # a 3x3 blur of noise flattens most gradients
    assert loss.item() == pytest.approx(mse + weight * edges, rel=1e-5)


def test_a_learned_residual_trains_its_segmenter_and_scores_with_it_after_loading(mvtec_root, tmp_path):
    overrides = tiny_overrides(mvtec_root, tmp_path / "run") + [
        "+trainer.limit_train_batches=2",
        "trainer.max_epochs=2",
        "score.residual=squared_gradient_and_learned",
    ]
    metrics = fit(compose_config(overrides))
    assert 0 <= metrics["test/pixel_auroc"] <= 1
    module = load_module(tmp_path / "run/checkpoints/last.ckpt")
    assert module.hparams.score["segmenter_width"] == 8 and module.hparams.score["segmenter_depth"] == 3
    norm = module.scorer.segmenter.encoder[0][1]  # ran in training: its running statistics moved from 0 / 1
    assert norm.running_mean.abs().max() > 1e-3 and (norm.running_var - 1).abs().max() > 1e-3
    std = module.scorer.residual_std[2]  # the learned component's clean statistics: fitted, not 1
    assert torch.isfinite(std).all() and not torch.equal(std, torch.ones_like(std))
    scorer = load_scorer(tmp_path / "run/checkpoints/last.ckpt", torch.device("cpu"))
    images = torch.rand(2, module.hparams.in_channels, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(scorer(images)[0], module.scorer(images)[0])


def test_the_segmenter_loss_is_added_and_does_not_reach_the_autoencoder(mvtec_root, tmp_path):
    cfg = compose_config(
        [*tiny_overrides(mvtec_root, tmp_path), "score.residual=squared_gradient_and_learned"]
    )
    module = build_module(cfg, SimpleNamespace(augment={}, channels=1, image_size=32, has_masks=True))
    module.log = lambda *args, **kwargs: None  # no trainer to log to
    module.hparams.sync_every_n_steps = 1  # checks the loss at once: no trainer to ask for the batch count
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 1, 32, 32, generator=generator)
    corrupted, masks = module.val_corruption(images, generator)
    batch = {"image": images, "input": corrupted, "target": images, "corruption_mask": masks}
    loss = module.training_step(batch, 0)
    loss.backward()
    with torch.no_grad():
        reconstructions = module.autoencoder(corrupted)
        expected = module._loss(reconstructions, batch) + segmentation_loss(
            module.scorer.segmenter(corrupted, reconstructions), masks[:, 0]
        )
    assert masks.sum() > 0 and loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert module.scorer.segmenter.head.weight.grad.abs().sum() > 0
    autoencoder_grads = [p.grad.clone() for p in module.autoencoder.parameters()]
    module.zero_grad()
    module._loss(module.autoencoder(corrupted), batch).backward()  # the reconstruction loss alone
    for alone, with_segmenter in zip(module.autoencoder.parameters(), autoencoder_grads, strict=True):
        assert torch.allclose(alone.grad, with_segmenter, atol=1e-7)

"""Trainer and model options that change how, not what, is trained: precision, compile, lr scaling."""

import json

import pytest
import torch
from torch._dynamo.exc import BackendCompilerFailed
from torch._dynamo.utils import counters

from anomaly_ae.cli.train import build_module, fit
from tests.helpers import compose_config, tiny_overrides


def tiny_fit(mvtec_root, tmp_path, *extra: str) -> dict[str, float]:
    overrides = tiny_overrides(mvtec_root, tmp_path / "run") + [
        "trainer.max_epochs=1",
        "+trainer.limit_val_batches=1",
    ]
    return fit(compose_config(overrides + list(extra)))


def test_bf16_mixed_precision_trains_and_tests_on_cpu(mvtec_root, tmp_path, one_thread):
    metrics = tiny_fit(mvtec_root, tmp_path, "trainer.precision=bf16-mixed")
    assert 0 <= metrics["test/image_auroc"] <= 1 and 0 <= metrics["test/pixel_auroc"] <= 1
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert all(w.dtype == torch.float32 for w in checkpoint["state_dict"].values() if w.is_floating_point())


def test_model_compile_runs_the_compiled_autoencoder(mvtec_root, tmp_path, one_thread):
    counters.clear()
    try:
        metrics = tiny_fit(mvtec_root, tmp_path, "model.compile=true")
    except BackendCompilerFailed as error:  # inductor needs a working C++ compiler on CPU
        pytest.skip(f"torch.compile's inductor backend cannot compile here: {error}")
    assert 0 <= metrics["test/image_auroc"] <= 1
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo captured the autoencoder's forward
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["compile"] is True
    assert "scorer.autoencoder.stem.0.weight" in checkpoint["state_dict"]  # plain keys: loads uncompiled
    assert "compile" not in checkpoint["hyper_parameters"]["model"]


class FakeTrainer:
    world_size = 4
    estimated_stepping_batches = 100
    callbacks: list = []


@pytest.mark.parametrize(("scale", "expected"), [("false", 2.0e-4), ("true", 8.0e-4)])
def test_lr_scales_with_world_size_only_when_asked(mvtec_root, tmp_path, scale, expected):
    cfg = compose_config(tiny_overrides(mvtec_root, tmp_path) + [f"optim.scale_lr_with_world_size={scale}"])
    datamodule = type("Data", (), {"augment": {}, "channels": 1, "image_size": 32, "has_masks": True})()
    module = build_module(cfg, datamodule)
    module.trainer = FakeTrainer()
    optimizer = module.configure_optimizers()["optimizer"]
    assert optimizer.defaults["lr"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.gpu
def test_one_gpu_with_bf16_and_compile(mvtec_root, tmp_path):
    extra = ("trainer=gpu", "trainer.precision=bf16-mixed", "model.compile=true")
    metrics = fit(
        compose_config(tiny_overrides(mvtec_root, tmp_path / "run") + ["trainer.max_epochs=1", *extra])
    )
    assert 0 <= metrics["test/image_auroc"] <= 1 and 0 <= metrics["test/pixel_auroc"] <= 1


def test_a_run_cut_by_max_time_ends_with_an_annealed_learning_rate(mvtec_root, tmp_path, one_thread):
    overrides = ["trainer.max_epochs=10000", "trainer.max_time=00:00:00:06", "optim.warmup_steps=0"]
    fit(compose_config(tiny_overrides(mvtec_root, tmp_path / "run") + overrides))
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["epoch"] < 9999  # the clock ended it, not the step count
    lr = checkpoint["optimizer_states"][0]["param_groups"][0]["lr"]
    assert lr < 0.01 * 2.0e-4  # by the step count alone it would still be at ~100 % of optim.lr


def test_fast_dev_run_tests_the_weights_in_memory_and_writes_valid_json(mvtec_root, tmp_path, one_thread):
    metrics = fit(
        compose_config(tiny_overrides(mvtec_root, tmp_path / "run") + ["+trainer.fast_dev_run=true"])
    )
    assert 0 <= metrics["test/image_auroc"] <= 1
    text = (tmp_path / "run/metrics.json").read_text()
    report = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics.json"))
    assert report["checkpoint"].startswith("none written (trainer.fast_dev_run)")

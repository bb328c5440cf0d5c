"""The fast options of trainer=gpu: on for GPUs through `auto`, off on CPUs, each one trainable on a CPU."""

import pytest
import torch

from anomaly_ae.cli.train import build_module, fit, host_sync_steps
from anomaly_ae.training.speed import adam
from tests.helpers import compose_config, tiny_overrides
from tests.integration.test_resume import same_weights, weights

DATA = type("Data", (), {"augment": {}, "channels": 1, "image_size": 32, "has_masks": True})()


def test_auto_options_are_on_for_gpus_and_off_for_cpus(mvtec_root, tmp_path):
    cpu = compose_config(tiny_overrides(mvtec_root, tmp_path))
    gpu = compose_config(tiny_overrides(mvtec_root, tmp_path) + ["trainer=gpu"])  # composed, not run
    assert (gpu.trainer.precision, gpu.trainer.benchmark) == ("bf16-mixed", True)
    assert (cpu.trainer.precision, cpu.trainer.benchmark) == ("32-true", None)  # CPU runs as before
    for cfg, on, steps in ((cpu, False, 1), (gpu, True, 10)):
        module = build_module(cfg, DATA)
        assert module.hparams.channels_last is on and module.hparams.optim["fused"] is on
        assert module.hparams.sync_every_n_steps == host_sync_steps(cfg) == steps  # log_every_n_steps: 10
        assert "channels_last" not in module.hparams.model  # how to run it, not what it is


def test_channels_last_fused_adam_and_deferred_checks_train_on_a_cpu(mvtec_root, tmp_path, one_thread):
    extra = ["model.channels_last=true", "optim.fused=true", "logging.sync_every_n_steps=3"]
    overrides = tiny_overrides(mvtec_root, tmp_path / "run") + ["trainer.max_epochs=1", *extra]
    metrics = fit(compose_config(overrides + ["+trainer.limit_val_batches=1"]))
    assert 0 <= metrics["test/image_auroc"] <= 1 and 0 <= metrics["test/pixel_auroc"] <= 1
    checkpoint = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["channels_last"] is True
    assert "scorer.autoencoder.stem.0.weight" in checkpoint["state_dict"]  # plain keys
    kernels = [w for w in checkpoint["state_dict"].values() if w.ndim == 4]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in kernels)
    assert not all(w.is_contiguous() for w in kernels)  # (N, C > 1, k, k): the strides did change


def test_deferred_non_finite_check_still_stops_the_run(mvtec_root, tmp_path):
    overrides = tiny_overrides(mvtec_root, tmp_path / "run") + [
        "trainer.max_epochs=2", "optim.lr=1e30", "optim.scheduler=none", "logging.sync_every_n_steps=3",
    ]  # fmt: skip
    with pytest.raises(FloatingPointError) as error:
        fit(compose_config(overrides))
    message = str(error.value)
    assert message.startswith("training loss is ") and " at step " in message
    assert "non-finite at least once in the last 3 steps" in message


def test_fused_adam_falls_back_where_unsupported():
    params = [torch.nn.Parameter(torch.zeros(3, device="meta"))]  # no fused kernel for the meta device
    with pytest.warns(
        UserWarning,
        match=r"optim.fused=true: fused Adam is not supported for \['meta torch.float32'\]; using the",
    ):
        optimizer = adam(params, True, lr=1e-3)
    assert not optimizer.defaults["fused"]
    assert adam([torch.nn.Parameter(torch.zeros(3))], True, lr=1e-3).defaults["fused"]  # CPUs have one


@pytest.mark.gpu
def test_deterministic_gpu_runs_give_bit_identical_weights_on_either_data_path(mvtec_root, tmp_path):
    def run(name: str, resident: str) -> tuple[dict, dict]:
        out = tmp_path / name
        overrides = tiny_overrides(mvtec_root, out) + [
            "trainer=gpu", "trainer.deterministic=true", "trainer.benchmark=false",  # docs/scale_out.md
            f"data.resident={resident}", "data.resident_eval_batch_size=null", "trainer.max_epochs=2",
        ]  # fmt: skip
        return fit(compose_config(overrides)), weights(out / "checkpoints/last.ckpt")

    metrics_a, weights_a = run("a", "true")
    metrics_b, weights_b = run("b", "true")
    metrics_c, weights_c = run("c", "false")
    assert weights_a["scorer.autoencoder.stem.0.weight"].is_cuda is False  # saved to the host, as always
    assert same_weights(weights_a, weights_b) and metrics_a == metrics_b
    assert same_weights(weights_a, weights_c) and metrics_a == metrics_c

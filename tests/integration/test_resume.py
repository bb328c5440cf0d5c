"""Reproducible runs, a SIGKILLed run that resumes to the same weights, and damaged checkpoints."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anomaly_ae.cli.train import fit
from anomaly_ae.training.checkpointing import AtomicCheckpointIO, ResumeError, resume_path
from tests.helpers import compose_config, tiny_overrides
from tests.integration.test_predict import cached_checkpoint


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_same_seed_gives_identical_weights_and_metrics_other_seed_differs(mvtec_root, tmp_path, one_thread):
    def run(name: str, seed: int) -> tuple[dict, dict]:
        out = tmp_path / name
        overrides = tiny_overrides(mvtec_root, out) + [f"seed={seed}", "trainer.max_epochs=2"]
        metrics = fit(compose_config(overrides + ["trainer.deterministic=true"]))
        return metrics, weights(out / "checkpoints/last.ckpt")

    metrics_a, weights_a = run("a", seed=0)
    metrics_b, weights_b = run("b", seed=0)
    metrics_c, weights_c = run("c", seed=1)
    assert metrics_a == metrics_b  # bit-identical floats, not approximately equal
    assert same_weights(weights_a, weights_b)
    assert not same_weights(weights_a, weights_c)


def test_sigkilled_run_resumes_to_the_weights_of_an_uninterrupted_run(mvtec_root, tmp_path):
    args = [o for o in tiny_overrides(mvtec_root, Path("unused")) if not o.startswith("output_dir=")]
    args += ["trainer.max_epochs=6", "+trainer.limit_val_batches=1"]  # a checkpoint after every epoch
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "anomaly_ae.run", *args]

    def run(folder: str, *extra: str) -> None:
        result = subprocess.run(
            [*command, f"hydra.run.dir={folder}", *extra],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr

    run("whole")
    killed = subprocess.Popen(
        [*command, "hydra.run.dir=killed"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = tmp_path / "killed/checkpoints/last.ckpt"
    deadline = time.monotonic() + 120
    while not last.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait() == -signal.SIGKILL  # killed, not finished
    assert not (tmp_path / "killed/metrics.json").exists()
    stopped_at = torch.load(last, weights_only=True)["epoch"]
    assert stopped_at < 5  # part way through the 6 epochs

    run("killed", "resume=last")
    whole = json.loads((tmp_path / "whole/metrics.json").read_text())
    resumed = json.loads((tmp_path / "killed/metrics.json").read_text())
    assert resumed["steps"] == whole["steps"] == 24
    assert resumed["metrics"] == whole["metrics"]
    for name in ("last.ckpt", "best.ckpt"):
        assert same_weights(weights(tmp_path / "whole/checkpoints" / name), weights(last.parent / name)), name


def test_resume_last_falls_back_to_the_newest_loadable_checkpoint(mvtec_root, tmp_path, caplog, one_thread):
    out = tmp_path / "run"
    base = tiny_overrides(mvtec_root, out) + ["+trainer.limit_val_batches=1"]
    fit(compose_config(base + ["trainer.max_epochs=2"]))
    folder = out / "checkpoints"
    last, best = folder / "last.ckpt", folder / "best.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # as if killed mid-write
    with caplog.at_level(logging.WARNING, logger="anomaly_ae.training.checkpointing"):
        assert resume_path("last", out) == str(best)
    assert f"resume=last: {last} is damaged (it does not load); resuming from {best} instead." in caplog.text

    fit(compose_config(base + ["trainer.max_epochs=3", "resume=last"]))  # continues from best.ckpt
    assert json.loads((out / "metrics.json").read_text())["epochs"] == 3

    for path in (last, best):
        path.write_bytes(b"")
    with pytest.raises(ResumeError, match=r"resume=last: .*last.ckpt is damaged .* no other checkpoint in"):
        resume_path("last", out)


def test_atomic_save_keeps_the_previous_checkpoint_when_a_write_fails(tmp_path):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    with pytest.raises(AttributeError):  # torch.save fails mid-stream on an unpicklable object
        io.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "bad": lambda: None}, path)
    assert torch.equal(weights(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # the partial file is removed


def test_resume_last_falls_back_to_best_when_the_first_last_ckpt_never_completed(tmp_path_factory, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "best.ckpt").write_bytes(cached_checkpoint(tmp_path_factory).read_bytes())
    (folder / ".last.ckpt.partial").write_bytes(b"half a checkpoint")  # killed while writing last.ckpt
    assert resume_path("last", tmp_path) == str(folder / "best.ckpt")
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt"]  # the stale partial is gone

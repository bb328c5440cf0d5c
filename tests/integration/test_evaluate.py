"""`anomaly-ae test` evaluates a checkpoint, no training; sweeps see val/ metrics; old checkpoints load."""

from __future__ import annotations

import json

import pytest
import torch
from hydra import compose, initialize_config_dir

from anomaly_ae.cli.common import CONF_DIR
from anomaly_ae.cli.main import main
from anomaly_ae.cli.test import evaluate
from anomaly_ae.cli.train import fit
from anomaly_ae.inference.detector import Detector
from anomaly_ae.inference.loading import load_scorer
from tests.helpers import compose_config, tiny_overrides
from tests.integration.test_predict import cached_checkpoint


def test_test_command_reproduces_the_training_runs_test_of_its_checkpoint(mvtec_root, tmp_path):
    metrics = fit(compose_config(tiny_overrides(mvtec_root, tmp_path / "run") + ["trainer.max_epochs=2"]))
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    saved = torch.load(best, map_location="cpu", weights_only=True)["callbacks"]
    selected = next(state["best_model_score"] for key, state in saved.items() if "val/pixel_auroc" in key)
    assert metrics["val/pixel_auroc"] == pytest.approx(float(selected))  # the selected checkpoint's score
    overrides = [f"checkpoint={best}", f"data.root={mvtec_root}", "category=toy", "trainer=cpu"]
    overrides += [
        f"output_dir={tmp_path / 'eval'}",
        "data.num_workers=0",
        "trainer.enable_progress_bar=false",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        evaluated = evaluate(compose(config_name="test", overrides=overrides))
    assert evaluated == pytest.approx({k: v for k, v in metrics.items() if k.startswith("test/")}, abs=1e-7)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["checkpoint"] == str(best) and report["steps"] == 0
    scores = [(tmp_path / run / "scores.csv").read_text() for run in ("run", "eval")]
    assert scores[0] == scores[1] and (tmp_path / "eval" / "examples.png").is_file()


def test_a_sweep_metric_on_test_data_is_refused(mvtec_root, tmp_path, capsys):
    overrides = tiny_overrides(mvtec_root, tmp_path / "run") + ["sweep_metric=test/image_auroc"]
    with pytest.raises(SystemExit) as stopped:
        main(["train", *overrides])
    assert stopped.value.code == 2  # a bad config value (docs/errors.md)
    assert capsys.readouterr().err.startswith("error: sweep_metric=test/image_auroc is not allowed: ")
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before any training


def test_a_checkpoint_of_the_earlier_flat_layout_still_loads(tmp_path_factory, tmp_path):
    path = cached_checkpoint(tmp_path_factory)
    content = torch.load(path, map_location="cpu", weights_only=True)
    prefix = "scorer.autoencoder."
    content["state_dict"] = {
        ("model." + key.removeprefix(prefix) if key.startswith(prefix) else key): value
        for key, value in content["state_dict"].items()
    }
    content["hyper_parameters"]["model"]["_target_"] = "anomaly_ae.model.ConvAutoencoder"
    content["hyper_parameters"]["corruption"] = {"_target_": "anomaly_ae.corruption.StructuredCorruption"}
    torch.save(content, tmp_path / "old.ckpt")
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    new, old = (Detector.load(p, device="cpu").predict(images) for p in (path, tmp_path / "old.ckpt"))
    assert torch.equal(new.scores, old.scores) and new.image_threshold == old.image_threshold
    with torch.no_grad():
        maps, _ = load_scorer(tmp_path / "old.ckpt", torch.device("cpu"))(images)
    assert torch.allclose(maps, torch.stack(new.maps))

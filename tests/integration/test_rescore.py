"""experiments/rescore.py: the score options re-evaluated on a trained run's own weights."""

from __future__ import annotations

import json

import pytest
import torch

from anomaly_ae.cli.train import fit
from tests.helpers import compose_config, load_script, tiny_overrides


def test_rescore_reproduces_the_runs_own_test_and_scores_every_option(mvtec_root, tmp_path, capsys):
    rescore = load_script("rescore")
    fit(compose_config(tiny_overrides(mvtec_root, tmp_path / "run") + ["trainer.max_epochs=2"]))
    rows = rescore.rescore(tmp_path / "run", rescore.VARIANTS)
    assert [row["score"] for row in rows] == list(rescore.VARIANTS)  # the default trains a segmenter
    test = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    as_trained = rows[0]
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):  # the same weights and score: the same numbers
        assert as_trained[key] == pytest.approx(test[f"test/{key}"], abs=1e-6), key
    assert as_trained["family_square"] == pytest.approx(test["test/image_auroc"], abs=1e-6)  # one family
    # The validation pseudo-defects are drawn as in training: the selected checkpoint's own monitored value.
    states = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", weights_only=True)["callbacks"]
    best = [v["best_model_score"] for v in states.values() if v.get("monitor") == "val/pixel_auroc"]
    assert as_trained["val_pixel_auroc"] == pytest.approx(float(best[0]), abs=1e-6)
    for row in rows:
        assert all(0 <= row[k] <= 1 for k in ("image_auroc", "pixel_auroc", "pixel_aupro", "val_pixel_auroc"))
    capsys.readouterr()  # the training run's own output
    rescore.main([str(tmp_path / "run"), "--variants", "as trained,normalize=pixel"])
    table = capsys.readouterr().out.splitlines()
    columns = "val_image_auroc | val_pixel_auroc | image_auroc | pixel_auroc | pixel_aupro | square"
    assert table[0] == f"| run | score | {columns} |"
    assert [line.split(" | ")[1] for line in table[2:]] == ["as trained", "normalize=pixel"]
    assert not any("," in name for name in rescore.VARIANTS)  # every one can be chosen by --variants
    with pytest.raises(SystemExit):
        rescore.main([str(tmp_path / "run"), "--variants", "as trained,bogus"])
    assert "--variants: unknown ['bogus']; choose from" in capsys.readouterr().err


def test_the_seeds_table_is_the_mean_and_std_over_runs_that_differ_only_in_the_seed():
    rescore = load_script("rescore")
    rows = [
        {"run": "a_brick_seed0_600x128", "score": "s", "image_auroc": 0.8, "pixel_auroc": 0.6},
        {"run": "a_brick_seed1_600x128", "score": "s", "image_auroc": 0.6, "pixel_auroc": 0.9},
        {"run": "a_mono_seed0_600x128", "score": "s", "image_auroc": 0.5},
    ]
    assert rescore.seeds_table(rows).splitlines()[2:] == [
        "| a_brick_600x128 | s | 2 | 0.700 ± 0.141 | 0.750 ± 0.212 | n/a |",  # sample std, as quality.py
        "| a_mono_600x128 | s | 1 | 0.500 ± 0.000 | n/a | n/a |",
    ]


def test_rescoring_a_learned_run_reuses_its_trained_segmenter(mvtec_root, tmp_path):
    rescore = load_script("rescore")
    overrides = ["trainer.max_epochs=2"]  # the default score.residual=squared_gradient_and_learned
    fit(compose_config(tiny_overrides(mvtec_root, tmp_path / "run") + overrides))
    variants = {
        name: rescore.VARIANTS[name] for name in ("as trained", "squared_gradient_and_learned", "learned")
    }
    as_trained, same, alone = rescore.rescore(tmp_path / "run", variants)
    for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):  # a fresh segmenter would score otherwise
        assert same[key] == pytest.approx(as_trained[key], abs=1e-6), key
    assert alone["pixel_auroc"] != pytest.approx(as_trained["pixel_auroc"], abs=1e-6)

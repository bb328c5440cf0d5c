"""experiments/ensemble.py: two trained runs scored as one, by the mean of their normalised maps."""

from __future__ import annotations

import json
import shutil

import pytest

from anomaly_ae.cli.train import fit
from tests.helpers import compose_config, load_script, tiny_overrides


def test_each_run_alone_reproduces_its_test_and_a_run_paired_with_itself_is_unchanged(
    mvtec_root, tmp_path, capsys
):
    ensemble = load_script("ensemble")
    skips, plain = tmp_path / "skips_toy_seed0", tmp_path / "plain_toy_seed0"
    common = ["trainer.max_epochs=2", "score.normalize=pixel"]
    fit(compose_config(tiny_overrides(mvtec_root, skips) + common + ["model.skips=true"]))
    fit(compose_config(tiny_overrides(mvtec_root, plain) + common + ["model.skips=false"]))
    rows = ensemble.ensemble(skips, plain, "skips", "plain")
    assert [(row["run"], row["score"]) for row in rows] == [
        ("toy_seed0", "skips"), ("toy_seed0", "plain"), ("toy_seed0", "mean of both")
    ]  # fmt: skip
    for row, run in zip(rows, (skips, plain), strict=False):  # the same weights and score: the same numbers
        test = json.loads((run / "metrics.json").read_text())["metrics"]
        for key in ("image_auroc", "pixel_auroc", "pixel_aupro"):
            assert row[key] == pytest.approx(test[f"test/{key}"], abs=1e-6), (run.name, key)
    assert all(0 <= rows[2][k] <= 1 for k in ("image_auroc", "pixel_auroc", "pixel_aupro", "family_square"))

    twin = tmp_path / "twin_toy_seed0"
    shutil.copytree(skips, twin)
    alone, _, both = ensemble.ensemble(skips, twin, "skips", "twin")
    numbers = [key for key in alone if key not in ("run", "score")]
    assert {k: both[k] for k in numbers} == pytest.approx({k: alone[k] for k in numbers}, abs=1e-6)

    capsys.readouterr()  # the training runs' own output
    ensemble.main([str(skips), "--partner", "skips:plain", "--seeds-table"])
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| run | score | image_auroc | pixel_auroc | pixel_aupro | square |"  # no validation
    assert [line.split(" | ")[1] for line in table[2:5]] == ["skips", "plain", "mean of both"]
    assert table[8].startswith("| toy | skips | 1 | ")  # seeds table: run name without _seed<n>
    with pytest.raises(SystemExit):
        ensemble.main([str(skips), "--partner", "skips:nothing"])
    assert f"{skips} has no partner: {tmp_path / 'nothing_toy_seed0'}/checkpoints/best.ckpt" in (
        capsys.readouterr().err
    )

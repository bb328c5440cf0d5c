"""experiments/ablation.py end to end on the toy tree: 2 variants x 1 category x 1 seed x 2 steps."""

from __future__ import annotations

import csv
import math
import re

import pytest

from tests.helpers import load_script, make_mvtec_tree


def test_ablation_table_has_a_row_per_variant_with_metrics_in_unit_range(tmp_path, capsys, one_thread):
    ablation = load_script("ablation")
    root = make_mvtec_tree(tmp_path / "mvtec")
    table = tmp_path / "ablation.csv"
    argv = ["--variants", "plain_ae,gaussian_dae", "--datasets", "mvtec:toy", "--seeds", "0", "--steps", "2",
            "--image-size", "32", "--csv", str(table), "--output-dir", str(tmp_path / "runs"),
            "--override", f"data.root={root}", "--override", "data.num_workers=0",
            "--override", "data.val_fraction=0.25"]  # fmt: skip
    ablation.main(argv)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2 steps of batch 16 at 32 px per run; seeds 0 (as far as run)"
    assert out[1] == "| variant | data | seeds | image AUROC | pixel AUROC | AUPRO |"
    rows = [line.split(" | ") for line in out[3:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("| plain_ae", "mvtec:toy", "1"),
        ("| gaussian_dae", "mvtec:toy", "1"),
    ]
    for row in rows:
        values = [float(v) for v in re.findall(r"\d\.\d{3}", " ".join(row[3:]))]
        assert len(values) == 3 and all(0 <= v <= 1 for v in values)

    with table.open() as file:
        written = list(csv.DictReader(file))
    assert [r["variant"] for r in written] == ["plain_ae", "gaussian_dae"]
    assert all(0 <= float(r[m]) <= 1 for r in written for m in ("image_auroc", "pixel_auroc", "pixel_aupro"))
    runs = (tmp_path / "ablation_runs.csv").read_text()
    assert len(runs.splitlines()) == 3  # header + one run per variant
    # The plain autoencoder really ran without corruption and with a squeezed code, the DAE with noise.
    plain = (tmp_path / "runs/plain_ae_mvtec_toy_seed0/config.yaml").read_text()
    assert "bottleneck_channels: 8" in plain and "skips: false" in plain and "corruption: {}" in plain
    dae = (tmp_path / "runs/gaussian_dae_mvtec_toy_seed0/config.yaml").read_text()
    assert "_target_: anomaly_ae.corruption.gaussian.GaussianNoiseCorruption" in dae

    ablation.main(argv)  # finished runs are read back, not repeated
    assert (tmp_path / "ablation_runs.csv").read_text() == runs
    assert capsys.readouterr().out.splitlines()[3:] == out[3:]


def test_bad_choices_name_the_options(tmp_path):
    ablation = load_script("ablation")
    with pytest.raises(SystemExit, match=f"no finished runs at this budget in {tmp_path}/none_runs.csv"):
        ablation.main(["--table-only", "--csv", str(tmp_path / "none.csv")])
    assert ablation.parse_datasets("textures,elpv:mono") == [
        ("textures", "brick"), ("textures", "grass"), ("textures", "gravel"), ("elpv", "mono")
    ]  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"--datasets 'mvtec': give data:category, or one of \['elpv', 'materials', 'textures'\]",
    ):
        ablation.parse_datasets("mvtec")
    with pytest.raises(SystemExit):
        ablation.main(["--variants", "paper_c"])


def test_summary_rows_and_category_mean_over_complete_seeds():
    ablation = load_script("ablation")

    def run(category: str, seed: int, auroc: float) -> dict:
        return {"variant": "paper_a", "data": "textures", "category": category, "seed": str(seed),
                "image_auroc": str(auroc), "pixel_auroc": str(auroc / 2), "pixel_aupro": ""}  # fmt: skip

    runs = [run("brick", 0, 0.6), run("grass", 0, 0.8), run("brick", 1, 0.8), run("grass", 1, 1.0)]
    runs.append(run("brick", 2, 0.1))  # seed 2 lacks grass: in the brick row, not in the mean
    pairs = [("textures", "brick"), ("textures", "grass"), ("textures", "gravel")]
    table = ablation.summarise(runs, ["paper_a"], pairs[:2])
    assert [(r["data"], r["seeds"]) for r in table] == [
        ("textures:brick", 3),
        ("textures:grass", 2),
        ("textures:mean", 2),
    ]
    brick, _, mean = table
    assert brick["image_auroc"] == pytest.approx(0.5) and brick["image_auroc_std"] == pytest.approx(0.3605551)
    # Per seed: (0.6 + 0.8) / 2 = 0.7 and (0.8 + 1.0) / 2 = 0.9 -> 0.8 ± 0.1414.
    assert mean["image_auroc"] == pytest.approx(0.8) and mean["image_auroc_std"] == pytest.approx(0.1414214)
    assert mean["pixel_auroc"] == pytest.approx(0.4)
    assert math.isnan(mean["pixel_aupro"])
    assert "| paper_a | textures:mean | 2 | 0.800 ± 0.141 | 0.400 ± 0.071 | n/a |" in ablation.markdown(table)
    # gravel never ran: no row, and no mean over an incomplete set of categories.
    assert [r["data"] for r in ablation.summarise(runs, ["paper_a"], pairs)] == [
        "textures:brick",
        "textures:grass",
    ]


def test_a_run_repeated_by_parallel_invocations_counts_once(tmp_path):
    ablation = load_script("ablation")
    path = tmp_path / "ablation_runs.csv"
    base = {"variant": "paper_a", "data": "elpv", "category": "mono", "steps": 2, "image_size": 32,
            "pixel_auroc": "nan", "pixel_aupro": "nan", "fit_seconds": 1.0}  # fmt: skip
    for seed, auroc in ((0, 0.6), (1, 0.7), (0, 0.9)):
        ablation.append_row(path, {**base, "seed": seed, "image_auroc": auroc})
    runs = ablation.read_runs(path)
    assert sorted((r["seed"], r["image_auroc"]) for r in runs) == [("0", "0.9"), ("1", "0.7")]

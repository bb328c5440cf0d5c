"""experiments/ablation.py end to end on the toy tree: 2 variants x 1 category x 1 seed x 2 steps."""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import pytest

from tests.conftest import make_mvtec_tree

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ablation.py"


def load_ablation():
    spec = importlib.util.spec_from_file_location("ablation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ablation_table_has_a_row_per_variant_with_metrics_in_unit_range(tmp_path, capsys, one_thread):
    ablation = load_ablation()
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
    assert "_target_: anomaly_ae.gaussian_noise.GaussianNoiseCorruption" in dae

    ablation.main(argv)  # finished runs are read back, not repeated
    assert (tmp_path / "ablation_runs.csv").read_text() == runs
    assert capsys.readouterr().out.splitlines()[3:] == out[3:]


def test_bad_choices_name_the_options(tmp_path):
    ablation = load_ablation()
    with pytest.raises(SystemExit, match=f"no finished runs at this budget in {tmp_path}/none_runs.csv"):
        ablation.main(["--table-only", "--csv", str(tmp_path / "none.csv")])
    assert ablation.parse_datasets("textures,elpv:mono") == [
        ("textures", "brick"), ("textures", "grass"), ("textures", "gravel"), ("elpv", "mono")
    ]  # fmt: skip
    with pytest.raises(
        ValueError, match=r"--datasets 'mvtec': give data:category, or one of \['elpv', 'textures'\]"
    ):
        ablation.parse_datasets("mvtec")
    with pytest.raises(SystemExit):
        ablation.main(["--variants", "paper_c"])

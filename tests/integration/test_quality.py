"""experiments/quality.py at --quick: 2 variants x texture brick x 1 seed, families and leave-one-out."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.helpers import load_script


def test_quick_suite_tabulates_families_speed_and_the_leave_one_out_check(tmp_path, capsys, one_thread):
    quality = load_script("quality")
    table = tmp_path / "quality.csv"
    argv = ["--quick", "--variants", "elpv_arch,elpv_arch_no_self", "--datasets", "textures:brick",
            "--seeds", "0", "--csv", str(table), "--output-dir", str(tmp_path / "runs"),
            "--override", f"data.root={tmp_path / 'textures'}"]  # fmt: skip
    quality.main(argv)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2 steps of batch 16 at 32 px per run; seeds 0 (as far as run)"
    assert out[1].startswith(
        "| variant | data | seeds | image AUROC | pixel AUROC | AUPRO | scratch | stain |"
    )
    assert out[1].endswith("| particles | train img/s | test s |")
    assert [line.split(" | ")[:2] for line in out[3:5]] == [
        ["| elpv_arch", "textures:brick"],
        ["| elpv_arch_no_self", "textures:brick"],
    ]
    check = out[
        out.index("Leave one family out (image AUROC of the resembling test family against the good images):")
        + 2 :
    ]
    assert check[2].startswith("| elpv_arch_no_self (vs elpv_arch) | misoriented | textures:brick | ")

    with (tmp_path / "quality_runs.csv").open() as file:
        runs = list(csv.DictReader(file))
    assert [r["variant"] for r in runs] == ["elpv_arch", "elpv_arch_no_self"]
    for run in runs:
        for family in quality.FAMILIES:  # every family of the texture demo is scored on its own
            assert 0 <= float(run[f"family_{family}"]) <= 1
        assert 0 <= float(run["pixel_aupro"]) <= 1 and float(run["train_images_per_s"]) > 0
    config = (Path(runs[1]["run_dir"]) / "config.yaml").read_text()
    assert "sources:\n  - batch\n  - texture\n" in config and "skips: false" in config

    before = (tmp_path / "quality_runs.csv").read_text()
    quality.main(argv)  # finished runs are read back, not repeated
    assert (tmp_path / "quality_runs.csv").read_text() == before
    assert capsys.readouterr().out.splitlines() == out


def test_family_auroc_from_scores_csv(tmp_path):
    quality = load_script("quality")
    path = tmp_path / "scores.csv"
    rows = [("g1", 0, "good", 0.1), ("g2", 0, "good", 0.3), ("s1", 1, "scratch", 0.2),
            ("s2", 1, "scratch", 0.4), ("h1", 1, "hole", 0.9), ("h2", 1, "hole", 0.3)]  # fmt: skip
    path.write_text(
        "path,label,defect_type,score,predicted\n"
        + "".join(f"{p},{lab},{d},{s},0\n" for p, lab, d, s in rows)
    )
    # scratch: 0.2 > 0.1, 0.4 > both: 3 of 4 pairs; hole: 0.9 > both, 0.3 > 0.1 and ties 0.3: 3.5 of 4.
    assert quality.family_aurocs(path) == {"scratch": 0.75, "hole": 0.875}
    assert quality.image_auroc([1.0, 2.0], [1, 1]) != quality.image_auroc(
        [1.0, 2.0], [1, 1]
    )  # nan: one class
    with pytest.raises(SystemExit):
        quality.main(["--variants", "best_one"])


@pytest.mark.parametrize("script", ["quality", "ablation"])
def test_every_variant_composes_and_passes_the_training_checks(script):
    from hydra import compose, initialize_config_dir

    from anomaly_ae.cli.common import CONF_DIR
    from anomaly_ae.cli.validate import TRAIN, validate

    module = load_script(script)
    extra = module.FORMULA_SCORE if script == "ablation" else []
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for name, overrides in module.VARIANTS.items():
            try:  # a stale key fails compose, a value out of range fails validate
                cfg = compose(config_name="config", overrides=["data=textures", *extra, *overrides])
                validate(cfg, TRAIN)
            except Exception as error:
                pytest.fail(f"variant {name} of {script}.py: {error}")

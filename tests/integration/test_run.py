import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anomaly_ae.cli.train import fit
from tests.helpers import compose_config, make_mvtec_tree, tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def test_fit_writes_metrics_config_and_checkpoints(mvtec_root, tmp_path):
    out = tmp_path / "run"
    cfg = compose_config(
        tiny_overrides(mvtec_root, out) + ["+trainer.limit_train_batches=2", "trainer.max_epochs=1"]
    )
    returned = fit(cfg)
    metrics = {key: value for key, value in returned.items() if key.startswith("test/")}
    assert set(returned) - set(metrics) >= {"val/pixel_auroc", "val/image_auroc", "val/loss"}  # for sweepers
    image_keys = {"image_auroc", "image_ap", "image_f1_max", "image_f1", "image_threshold"}
    pixel_keys = {
        "pixel_auroc",
        "pixel_ap",
        "pixel_f1_max",
        "pixel_aupro",
        "pixel_f1",
        "pixel_iou",
        "pixel_threshold",
    }
    assert set(metrics) == {f"test/{k}" for k in image_keys | pixel_keys}
    for key in ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro", "pixel_iou"):
        assert 0 <= metrics[f"test/{key}"] <= 1, key
    report = json.loads((out / "metrics.json").read_text())
    assert report["metrics"] == metrics and report["steps"] == 2
    assert report["thresholds"]["fitted_by"] == {
        "image": "f1 on validation pseudo-defects",
        "pixel": "f1 on validation pseudo-defects",
    }
    assert report["thresholds"]["image"] == metrics["test/image_threshold"]
    assert Path(report["checkpoint"]).name == "best.ckpt"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert "category: toy" in (out / "config.yaml").read_text()
    for name in ("scores.csv", "roc_pr.png", "examples.png"):
        assert (out / name).is_file(), name
    rows = (out / "scores.csv").read_text().splitlines()
    assert rows[0] == "path,label,defect_type,score,predicted" and len(rows) == 1 + 12


def test_mask_resolution_upsamples_maps_to_the_ground_truth(tmp_path):
    root = make_mvtec_tree(tmp_path / "data", size=64)
    out = tmp_path / "run"
    overrides = tiny_overrides(root, out) + ["trainer.max_epochs=1", "+trainer.limit_train_batches=2"]
    metrics = fit(compose_config(overrides + ["eval.resolution=mask"]))
    report = json.loads((out / "metrics.json").read_text())
    assert report["eval_resolution"] == "ground-truth mask size (anomaly maps upsampled bilinearly)"
    at_model = fit(compose_config(overrides + ["eval.resolution=model", f"output_dir={tmp_path / 'model'}"]))
    assert (
        json.loads((tmp_path / "model/metrics.json").read_text())["eval_resolution"] == "model input (32x32)"
    )
    assert metrics["test/image_auroc"] == at_model["test/image_auroc"]  # image scores do not depend on it
    assert metrics["test/pixel_auroc"] != at_model["test/pixel_auroc"]


def test_short_training_lowers_the_loss_and_detects_defects(tmp_path):
    root = make_mvtec_tree(tmp_path / "data", n_train=40, n_good=10, n_defect=10)
    out = tmp_path / "run"
    overrides = tiny_overrides(root, out) + [
        "logger=csv",
        "trainer.max_epochs=25",
        "trainer.check_val_every_n_epoch=5",
        "optim.lr=2e-3",
        "optim.warmup_steps=10",
        "data.val_fraction=0.2",
    ]
    metrics = fit(compose_config(overrides))
    rows = (out / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("train/loss_epoch")
    losses = [float(r.split(",")[column]) for r in rows[1:] if r.split(",")[column]]
    assert len(losses) == 25
    assert losses[-1] < 0.5 * losses[0]
    # Flat bright squares on stripes, never seen in training: well above chance at image and pixel level.
    assert metrics["test/image_auroc"] >= 0.8
    assert metrics["test/pixel_auroc"] >= 0.8


def test_elpv_demo_runs_end_to_end_on_the_real_cells(tmp_path):
    overrides = [
        "experiment=elpv_demo",
        f"output_dir={tmp_path}",
        "logger=none",
        "data.image_size=64",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1",
        "trainer.enable_progress_bar=false",
    ]
    metrics = fit(compose_config(overrides))
    assert 0 <= metrics["test/image_auroc"] <= 1
    assert not [key for key in metrics if "pixel" in key]  # no masks: not available, not zero
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["data"] == "ElpvDataModule" and report["category"] == "mono"
    assert report["pixel_metrics"] == "not available: the data has no masks"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"HYDRA_FULL_ERROR": "0", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "anomaly_ae.run", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def cli_overrides(root: Path) -> list[str]:
    drop = ("output_dir=", "category=")
    return [o for o in tiny_overrides(root, Path("unused")) if not o.startswith(drop)] + [
        "trainer.max_epochs=1"
    ]


def test_cli_single_run_and_multirun(tmp_path):
    root = make_mvtec_tree(tmp_path / "data", category="a")
    make_mvtec_tree(tmp_path / "data", category="b", seed=1)
    single = run_cli(*cli_overrides(root), "category=a", "hydra.run.dir=single", cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    assert "test/image_auroc" in single.stdout
    assert json.loads((tmp_path / "single/metrics.json").read_text())["category"] == "a"

    multi = run_cli("-m", *cli_overrides(root), "category=a,b", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert multi.returncode == 0, multi.stderr
    jobs = sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/metrics.json"))
    assert jobs == ["a_seed0_0", "b_seed0_1"]
    table = (tmp_path / "sweep/results.md").read_text()  # aggregated by the multirun callback
    assert "| a | 1 |" in table and "| b | 1 |" in table and "| mean | |" in table.replace("|  |", "| |")
    assert "Sweep results" in multi.stdout


def test_a_failed_job_of_a_multirun_leaves_the_other_jobs_running(tmp_path):
    root = make_mvtec_tree(tmp_path / "data", category="b")  # category a has no data
    multi = run_cli("-m", *cli_overrides(root), "category=a,b", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert multi.returncode == 1  # Hydra reports the failed job once the sweep has run
    assert f"error: {root}/a does not exist, but {root} does and holds" in multi.stderr
    assert [p.parent.name for p in (tmp_path / "sweep").glob("*/metrics.json")] == ["b_seed0_1"]


def test_cli_missing_mvtec_root_explains_how_to_get_data(tmp_path):
    result = run_cli("data.root=missing_root", "category=grid", "trainer=cpu", "logger=none", cwd=tmp_path)
    assert result.returncode == 5  # missing data (docs/errors.md)
    assert "Traceback" not in result.stderr
    assert (
        "MVTec AD not found: missing_root/grid does not exist. To get it, set data.download=true"
        in result.stderr
    )
    assert "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d" in result.stderr
    assert "Without it, data=elpv runs the offline demo." in result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 4, reason="needs 4 GPUs")
def test_canonical_command_on_four_gpus(tmp_path):
    root = make_mvtec_tree(tmp_path / "data", category="grid", size=64, n_train=64)
    result = run_cli(
        f"data.root={root}", "category=grid", "trainer.devices=4", "trainer.max_epochs=1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr


def test_resume_last_continues_the_run_where_it_stopped(mvtec_root, tmp_path):
    out = tmp_path / "run"
    base = tiny_overrides(mvtec_root, out) + ["+trainer.limit_val_batches=1"]
    fit(compose_config(base + ["trainer.max_epochs=1"]))
    first = torch.load(out / "checkpoints/last.ckpt", weights_only=True)
    assert first["global_step"] == 4 and "corruption_generator" in first
    fit(compose_config(base + ["trainer.max_epochs=2", "resume=last"]))
    report = json.loads((out / "metrics.json").read_text())
    assert report["steps"] == 8 and report["epochs"] == 2  # continued, not restarted
    with pytest.raises(
        FileNotFoundError, match=r"resume=last: no checkpoint at .*other/checkpoints/last.ckpt"
    ):
        fit(compose_config(tiny_overrides(mvtec_root, tmp_path / "other") + ["resume=last"]))


def test_non_finite_loss_stops_with_the_step_and_what_to_resume_from(mvtec_root, tmp_path):
    overrides = tiny_overrides(mvtec_root, tmp_path / "run") + [
        "trainer.max_epochs=2", "optim.lr=1e30", "optim.scheduler=none",  # explodes within a few steps
    ]  # fmt: skip
    with pytest.raises(FloatingPointError) as error:
        fit(compose_config(overrides))
    message = str(error.value)
    assert message.startswith("training loss is ") and " at step " in message
    assert "no checkpoint has been written yet" in message or "the last checkpoint is " in message
    assert message.endswith(
        "Lower optim.lr or set trainer.gradient_clip_val, then continue with resume=<checkpoint>."
    )

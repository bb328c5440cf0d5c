"""Loggers and terminal: W&B offline runs read by wandb's own reader, TensorBoard events, epoch lines."""

import csv
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import wandb
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from anomaly_ae.cli.train import fit, run_callbacks
from anomaly_ae.evaluation.results import TestRecorder
from anomaly_ae.integrations.loggers import log_sweep_report, wandb_logger, wandb_mode
from anomaly_ae.reporting.console import dashboard_rows
from anomaly_ae.reporting.sweep import write_report
from anomaly_ae.training.callbacks import epoch_line
from tests.helpers import compose_config, tiny_overrides
from tests.unit.reporting.test_report import write_run

PANEL = (5 * (32 + 2) + 2, 4 * (32 + 2) + 2)  # make_grid: 5 columns x 4 rows of 32 px tiles, 2 px padding


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    """W&B offline, with its caches and settings in tmp_path, and no login."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb_home" / name.lower()))
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    wandb.teardown()  # wandb reads the environment once per process: start from this one
    yield
    wandb.teardown()


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of an offline run's .wandb log, decoded by wandb's own reader (`wandb leet inspect`)."""
    result = subprocess.run(
        [sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def history(records: list[dict]) -> list[dict]:
    return [r["history"]["item"] for r in records if r["type"] == "history"]


def merged(records: list[dict], kind: str) -> dict:
    """The config or summary of a run: its updates applied in order."""
    out = {}
    for r in records:
        if r["type"] == kind:
            out |= r[kind].get("update", {})
    return out


def logged_object(item: dict, key: str) -> dict:
    """A media object of a history row, whose fields the log keeps as flat `key.field` entries."""
    return {k[len(key) + 1 :]: v for k, v in item.items() if k.startswith(key + ".")}


def test_csv_tensorboard_and_wandb_at_once(mvtec_root, tmp_path, wandb_offline, capsys):
    out = tmp_path / "run"
    overrides = tiny_overrides(mvtec_root, out) + [
        "logger=[csv,tensorboard,wandb]",
        "trainer.max_epochs=4",
        "trainer.check_val_every_n_epoch=2",  # validates after epochs 2 and 4 (1-based)
        "trainer.log_every_n_steps=1",
        "logging.panel_every_n_epochs=1",
    ]
    metrics = fit(compose_config(overrides))
    printed = capsys.readouterr().out

    # Terminal: one line per epoch; validation metrics only where the epoch validated.
    lines = [line for line in printed.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert ["val/pixel_auroc" in line for line in lines] == [False, True, False, True]
    parts = (
        "epoch 2/4",
        r"train/loss (\S+)",
        r"val/loss \S+",
        r"val/pixel_auroc (\S+)",
        r"val/image_auroc \S+",
    )
    pattern = "  ".join([*parts, r"lr \S+", r"[\d.]+ s"])
    loss, pixel_auroc = re.fullmatch(pattern, lines[1]).groups()
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    epoch_losses = [float(r["train/loss_epoch"]) for r in rows if r["train/loss_epoch"]]
    assert loss == f"{epoch_losses[1]:.4g}"
    assert pixel_auroc == f"{[float(r['val/pixel_auroc']) for r in rows if r['val/pixel_auroc']][0]:.4g}"
    lrs = [float(r["train/lr"]) for r in rows if r["train/lr"]]
    assert len(lrs) == 16 and lrs[-1] < lrs[0]  # every step of the cosine schedule

    # CSV: the panel as PNGs, one per validation (panel_every_n_epochs=1), steps 8 and 16.
    panels = sorted(p.name for p in (out / "csv" / "images").glob("*.png"))
    assert panels == ["val_panel_step000008.png", "val_panel_step000016.png"]
    assert Image.open(out / "csv" / "images" / panels[0]).size == PANEL

    # TensorBoard: the same scalars, the panel and the test curves.
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss_epoch", "train/lr", "val/pixel_auroc", "test/image_auroc"} <= set(tags["scalars"])
    assert {"val/panel", "test/roc_pr"} <= set(tags["images"])
    assert [e.step for e in events.Images("val/panel")] == [8, 16]
    assert (events.Images("val/panel")[0].width, events.Images("val/panel")[0].height) == PANEL
    assert events.Scalars("test/image_auroc")[0].value == pytest.approx(metrics["test/image_auroc"])

    # W&B: run metadata, scalars, panels, table, curves and the checkpoint artifact.
    run_dir = (out / "wandb" / "latest-run").resolve()
    assert run_dir.name.startswith("offline-run-")
    records = wandb_records(run_dir)
    run = next(r["run"] for r in records if r["type"] == "run")
    assert (run["display_name"], run["job_type"], run["tags"]) == ("toy_seed0", "toy", ["toy", "seed0"])
    config = merged(records, "config")
    assert config["category"] == "toy" and config["data"]["root"] == str(mvtec_root)  # the resolved config
    items = history(records)
    logged = set().union(*items)
    assert {
        "train/loss_step",
        "train/loss_epoch",
        "train/lr",
        "val/pixel_auroc",
        "test/pixel_aupro",
    } <= logged
    test_row = next(i for i in items if "test/image_auroc" in i)
    assert test_row["test/image_auroc"] == pytest.approx(metrics["test/image_auroc"])
    panels = [logged_object(i, "val/panel") for i in items if "val/panel._type" in i]
    assert [(p["_type"], p["width"], p["height"]) for p in panels] == [("images/separated", *PANEL)] * 2
    assert Image.open(run_dir / "files" / panels[0]["filenames"][0]).size == PANEL
    table_meta = next(logged_object(i, "test/images") for i in items if "test/images._type" in i)
    assert table_meta["_type"] == "table-file" and (table_meta["nrows"], table_meta["ncols"]) == (12, 6)
    # The run's files keep the rows; the table artifact (uploaded by `wandb sync`) also the overlays.
    artifacts = [r["artifact"] for r in records if r["type"] == "artifact"]
    staged = {c["path"]: c["local_path"] for a in artifacts for c in a["manifest"]["contents"]}
    table = json.loads(Path(staged["test/images.table.json"]).read_text())
    assert table["columns"] == ["path", "defect_type", "label", "score", "predicted", "overlay"]
    assert len(table["data"]) == 12
    scores = {r["path"]: r for r in csv.DictReader((out / "scores.csv").open())}
    for path, defect_type, label, score, predicted, overlay in table["data"]:
        row = scores[path]
        assert (defect_type, label, predicted) == (
            row["defect_type"],
            int(row["label"]),
            int(row["predicted"]),
        )
        assert score == pytest.approx(float(row["score"]))
        assert (overlay["_type"], overlay["width"], overlay["height"]) == ("image-file", 32, 32)
        assert ("masks" in overlay) == (label == 1)  # the ground truth drawn over defective images
    assert {"test/image_roc_table", "test/image_pr_table", "test/pixel_roc_table"} <= {
        key.split(".")[0] for key in logged
    }
    models = [a for a in artifacts if a["type"] == "model"]  # log_model: the selected checkpoint only
    assert [sorted(m["aliases"]) for m in models] == [["best", "latest"]]
    assert [c["path"] for c in models[0]["manifest"]["contents"]] == ["model.ckpt"]
    assert next(r["exit"]["exit_code"] for r in records if r["type"] == "exit") in (0, None)

    # The end table points at every dashboard.
    assert dashboard_rows(out) == [
        ("validation panels", str(out / "csv" / "images")),
        ("TensorBoard", f"tensorboard --logdir {out / 'tensorboard'}"),
        ("W&B run (offline)", f"wandb sync {run_dir}"),
    ]
    assert "W&B run (offline)" in printed


def test_without_login_wandb_runs_offline_and_says_how_to_sync(tmp_path, monkeypatch, wandb_offline, caplog):
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode(None) == "offline"
    assert wandb_mode("disabled") == "disabled"  # an explicit choice stands
    with caplog.at_level("INFO"):
        logger = wandb_logger(project="p", name="n", save_dir=str(tmp_path))
    assert logger._wandb_init["mode"] == "offline" and "anonymous" not in logger._wandb_init
    assert f"logging offline; upload later: wandb sync {tmp_path / 'wandb'}/offline-run-*" in caplog.text
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode(None) is None  # WANDB_MODE is left to wandb
    assert "mode" not in wandb_logger(project="p", name="n")._wandb_init


def test_a_login_keeps_wandb_online(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "WANDB_API_KEY": "k" * 40}  # never sent: no run
    code = "from anomaly_ae.integrations.loggers import wandb_mode; print(wandb_mode(None))"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.stdout.splitlines()[-1] == "None", result.stderr  # None: wandb.init's default, online


def test_a_failed_run_is_marked_failed_and_the_next_one_starts_fresh(mvtec_root, tmp_path, wandb_offline):
    overrides = tiny_overrides(mvtec_root, tmp_path / "run") + [
        "logger=wandb", "trainer.max_epochs=2", "optim.lr=1e30", "optim.scheduler=none",  # explodes
    ]  # fmt: skip
    with pytest.raises(FloatingPointError):
        fit(compose_config(overrides))
    records = wandb_records((tmp_path / "run" / "wandb" / "latest-run").resolve())
    assert next(r["exit"]["exit_code"] for r in records if r["type"] == "exit") == 1
    assert wandb.run is None  # a later WandbLogger starts its own run instead of reusing this one


def test_sweep_report_is_one_wandb_run_in_the_sweep_group(tmp_path, wandb_offline):
    sweep = tmp_path / "2026-11-23_10-00-00"
    write_run(sweep / "a", "carpet", 0, 0.90, 0.95, 0.80)
    write_run(sweep / "b", "screw", 0, 0.70, 0.90, 0.60)
    write_report(sweep)
    log_sweep_report({"project": "anomaly_ae", "entity": None, "group": None, "mode": None}, sweep)
    records = wandb_records((sweep / "wandb" / "latest-run").resolve())
    run = next(r["run"] for r in records if r["type"] == "run")
    assert (run["run_group"], run["job_type"]) == ("2026-11-23_10-00-00", "report")
    results = logged_object(history(records)[0], "sweep/results")
    assert results["_type"] == "table-file" and results["nrows"] == 5  # 2 categories, 3 means
    summary = merged(records, "summary")
    assert summary["sweep/mean/image_auroc"] == pytest.approx(0.80)


def test_epoch_line():
    metrics = {"train/loss_epoch": 0.012345, "val/pixel_auroc": 0.91234, "val/image_auroc": 0.88}
    assert epoch_line(3, 55, metrics, 1.9e-3, 12.34) == (
        "epoch 4/55  train/loss 0.01235  val/pixel_auroc 0.9123  val/image_auroc 0.88  lr 1.90e-03  12.3 s"
    )
    assert epoch_line(0, -1, {}, 2e-4, 0.04) == "epoch 1  lr 2.00e-04  0.0 s"  # max_time only: no total


def test_rich_progress_bar_only_when_the_bar_is_on(tmp_path):
    names = [
        type(c).__name__ for c in run_callbacks(compose_config([f"output_dir={tmp_path}"]), TestRecorder())
    ]
    assert names[-2:] == ["EpochSummary", "ProgressBar"]
    quiet = compose_config([f"output_dir={tmp_path}", "trainer.enable_progress_bar=false"])
    assert "ProgressBar" not in [type(c).__name__ for c in run_callbacks(quiet, TestRecorder())]


def test_library_adverts_and_quiet_warnings_are_dropped_real_ones_stay(caplog):
    import warnings

    from anomaly_ae.cli.train import QUIET
    from anomaly_ae.reporting.console import quiet_library_messages

    quiet_library_messages(QUIET)
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level("INFO", logger=log.name):
        log.info("💡 Tip: For seamless cloud logging ... try installing [litlogger]")
        log.info("GPU available: False, used: False")
    assert [r.getMessage() for r in caplog.records] == ["GPU available: False, used: False"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning shows, unless quieted
        quiet_library_messages(QUIET)
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated, use ...", DeprecationWarning, stacklevel=1
        )
        warnings.warn(
            "image threshold: quantile 0.99 (fallback: no pseudo-defects)", UserWarning, stacklevel=1
        )
    assert [str(w.message) for w in caught] == [
        "image threshold: quantile 0.99 (fallback: no pseudo-defects)"
    ]

"""DDP on CPU (gloo): two processes evaluate exactly like one; several devices select DDP by themselves."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from tests.conftest import compose_config, make_mvtec_tree, tiny_overrides


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "anomaly_ae.run", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def cli_overrides(root: Path) -> list[str]:
    return [o for o in tiny_overrides(root, Path("unused")) if not o.startswith("output_dir=")]


def read_run(folder: Path) -> tuple[dict, list[dict]]:
    with open(folder / "scores.csv") as file:
        rows = list(csv.DictReader(file))
    return json.loads((folder / "metrics.json").read_text()), rows


def test_two_processes_evaluate_a_checkpoint_exactly_like_one(tmp_path):
    # 11 test images: a padding sampler would give one rank a repeated image, which shifts the metrics.
    root = make_mvtec_tree(tmp_path / "data", n_good=5, n_defect=6)
    args = [*cli_overrides(root), "trainer.max_epochs=1", "hydra.run.dir=run"]
    single = run_cli(*args, cwd=tmp_path)
    assert single.returncode == 0, single.stderr
    one_report, one_rows = read_run(tmp_path / "run")
    # Same run dir, resume=last at max_epochs: training is already done, so only the test runs, on 2 ranks.
    ddp = run_cli(*args, "trainer.devices=2", "trainer.strategy=ddp", "resume=last", cwd=tmp_path)
    assert ddp.returncode == 0, ddp.stderr
    output = ddp.stdout + ddp.stderr
    assert "distributed_backend=gloo" in output and "GLOBAL_RANK: 1, MEMBER: 2/2" in output
    two_report, two_rows = read_run(tmp_path / "run")

    assert two_report["checkpoint"] == one_report["checkpoint"]
    assert len(one_rows) == 11 and two_rows == one_rows  # same images, once each, in dataset order
    assert set(two_report["metrics"]) == set(one_report["metrics"])
    for key, value in one_report["metrics"].items():
        assert abs(two_report["metrics"][key] - value) <= 1e-6, key


def test_several_devices_select_ddp_without_a_strategy_flag():
    base = ["trainer.accelerator=cpu", "logger=none", "output_dir=unused"]
    four = instantiate(compose_config(base + ["trainer.devices=4"]).trainer)
    assert isinstance(four.strategy, DDPStrategy) and four.world_size == 4
    one = instantiate(compose_config(base).trainer)
    assert isinstance(one.strategy, SingleDeviceStrategy) and one.world_size == 1

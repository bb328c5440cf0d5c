"""DDP on CPU (gloo): two processes evaluate exactly like one; several devices select DDP by themselves."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from anomaly_ae.data.mvtec import MVTecDataModule
from tests.helpers import compose_config, make_mvtec_tree, tiny_overrides


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


class FakeTrainer:
    def __init__(self, world_size: int, global_rank: int) -> None:
        self.world_size, self.global_rank = world_size, global_rank
        self.strategy = SimpleNamespace(root_device=torch.device("cpu"))  # where the loaders put batches


def test_each_process_gets_a_disjoint_unpadded_share_and_training_order_depends_on_seed_and_epoch(
    tmp_path, monkeypatch
):
    root = make_mvtec_tree(tmp_path / "data", n_good=5, n_defect=6)
    dm = MVTecDataModule(root=str(root), category="toy", image_size=32, batch_size=4, num_workers=0)
    dm.setup("fit")
    shares = []
    for rank in (0, 1):
        dm.trainer = FakeTrainer(2, rank)
        shares.append(list(dm.test_dataloader().sampler))
    assert shares == [[0, 2, 4, 6, 8, 10], [1, 3, 5, 7, 9]]  # 11 images, each once: no padding

    def train_order(seed: int, epoch: int) -> list[int]:
        monkeypatch.setenv("PL_GLOBAL_SEED", str(seed))
        dm.trainer = FakeTrainer(1, 0)
        sampler = dm.train_dataloader().sampler
        sampler.set_epoch(epoch)
        return list(sampler)

    assert train_order(0, 3) == train_order(0, 3) and sorted(train_order(0, 3)) == list(
        range(len(dm.train_set))
    )
    assert train_order(0, 3) != train_order(0, 4) and train_order(0, 3) != train_order(1, 3)

    dm.trainer = FakeTrainer(12, 0)
    with pytest.raises(ValueError, match=r"^11 evaluation images for 12 processes: every process needs"):
        dm.test_dataloader()

"""experiments/gpu_check.py --device cpu --quick writes its whole JSON and table: the GPU check cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_quick_on_a_cpu_writes_every_figure(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "experiments/gpu_check.py"), "--device", "cpu", "--quick"]
    done = subprocess.run(
        [*command, "--out", str(tmp_path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["device"] == "cpu" and report["commit"]
    training = report["training"]
    assert list(training) == [
        f"{name}, {path}"
        for name in ("fp32", "bf16", "bf16 + compile")
        for path in ("resident", "DataLoader")
    ]
    for case in ("fp32", "bf16"):
        for path in ("resident", "DataLoader"):
            assert (
                training[f"{case}, {path}"]["images_per_s"] > 0 and training[f"{case}, {path}"]["steps"] == 2
            )
    assert training["bf16 + compile, resident"] == {"skipped": "--quick"}
    assert report["loop"]["bare_ms"] > 0 and report["loop"]["lightning_ms"] > 0
    flops = report["flops"]
    assert flops["train_flops_per_image"] > 0 and flops["fraction_of_matmul"] > 0
    assert (
        flops["achieved_flops_per_s"]
        == flops["train_flops_per_image"] * training["bf16, resident"]["images_per_s"]
    )
    assert (
        report["inference"]["batch_1_images_per_s"] > 0 and report["inference"]["batch_64_images_per_s"] > 0
    )
    assert report["explanation"]["ratio"] > 0
    assert (
        0 <= report["short_run"]["test/image_auroc"] <= 1
        and 0 <= report["short_run"]["test/pixel_aupro"] <= 1
    )
    table = (tmp_path / "gpu_check.md").read_text().splitlines()
    assert table[0] == "| measure | value |" and len(table) == 2 + 4 + 6 + 1 + 1 + 2 + 1 + 3
    assert "| inference through Detector, batch 64 |" in "\n".join(table)
    assert table[-1].startswith("| short run (1 epochs, ") and done.stdout.rstrip().endswith(table[-1])

"""The --quick modes of experiments/bench_train.py, bench_inference.py, bench_score.py, bench_recipes.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from anomaly_ae.model.autoencoder import architecture
from anomaly_ae.model.scoring import RESIDUALS
from tests.helpers import load_script

ROOT = Path(__file__).resolve().parents[2]


def run_quick(script: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / script), "--quick"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def table_rows(lines: list[str], header: str) -> list[list[str]]:
    """The cells of the Markdown table whose header line starts with `header`."""
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_bench_train_quick_prints_throughput_and_ratios():
    lines = run_quick("bench_train.py")
    assert lines[0].startswith("model 0.01 M parameters (quick: tiny), batch 4 at 32x32x3, cpu")
    corruption = table_rows(lines, "| corruption |")
    assert [row[0] for row in corruption] == ["none", "on device (as the module)", "in 1 loader workers"]
    assert corruption[0][3] == "1.000"  # "none" against itself
    loop = table_rows(lines, "| training loop |")
    assert [row[0] for row in loop] == ["bare PyTorch loop", "Lightning Trainer.fit"]
    assert loop[0][3] == "1.000"
    for row in corruption + loop:
        images_per_s, ms, ratio = (float(v) for v in row[1:])
        assert images_per_s > 0 and ms > 0 and ratio > 0
        assert abs(images_per_s * ms / 1000 - 4) < 0.05  # batch 4: images/s x s/step
    assert any(
        line.startswith("on-device corruption (timed alone") and "% of a corrupted" in line for line in lines
    )
    assert any(line.startswith("Lightning overhead: ") and line.endswith("(target < 5 %)") for line in lines)


def conv_flops(model: torch.nn.Module, images: torch.Tensor) -> int:
    """2 x multiply-adds of every conv layer, from the layer shapes (a reference for FlopCounterMode)."""
    total = 0

    def count(layer, inputs, output) -> None:
        nonlocal total
        kh, kw = layer.kernel_size
        if isinstance(layer, torch.nn.ConvTranspose2d):  # every input value meets every output channel
            total += 2 * inputs[0].numel() * layer.out_channels * kh * kw // layer.groups
        else:
            total += 2 * output.numel() * layer.in_channels * kh * kw // layer.groups

    for layer in model.modules():
        if isinstance(layer, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            layer.register_forward_hook(count)
    with torch.no_grad():
        model(images)
    return total


def test_bench_inference_quick_prints_a_row_per_config():
    model = instantiate(architecture(OmegaConf.load(ROOT / "conf/model/conv_ae.yaml")), in_channels=3)
    conv_gflop = conv_flops(model, torch.rand(1, 3, 32, 32)) / 1e9
    lines = run_quick("bench_inference.py")
    assert lines[0] == (
        "default model, 3 channels, cpu, fp32, torch threads 1; x matmul: against a 256x256 matmul timed in "
        "the same process just before and after each config"
    )
    rows = table_rows(lines, "| size | batch |")
    assert [(row[0], row[1]) for row in rows] == [("32", "1"), ("32", "2")]
    for row in rows:
        images_per_s, ms, peak, gflop, gflops, matmul, fraction = (float(v) for v in row[2:])
        assert images_per_s > 0 and ms > 0 and peak >= 0 and matmul > 0
        assert abs(fraction - gflops / matmul) < 0.002 + 0.02 * fraction
        assert abs(images_per_s * ms / 1000 - int(row[1])) < 0.01 * int(row[1])
        assert abs(gflop - conv_gflop) < 0.01 * conv_gflop  # the map's small blur conv adds < 1 %
        assert abs(gflops - gflop * images_per_s) < 0.1 + 0.01 * gflops


def test_bench_score_quick_prints_every_residual_against_squared():
    lines = run_quick("bench_score.py")
    assert lines[0] == "32 px, batch 2, 1 threads, median of 2"
    rows = table_rows(lines, "| score.residual |")
    assert [row[0] for row in rows] == list(RESIDUALS)
    base = float(rows[0][1])
    assert rows[0][2] == "1.00"
    for _, rate, ratio in rows:
        assert float(rate) > 0 and abs(float(ratio) - float(rate) / base) < 0.01


def test_bench_recipes_quick_prints_each_recipe_against_the_first():
    lines = run_quick("bench_recipes.py")
    assert lines[0] == (
        "32 px x 3 channels, training batch 4, inference batch 4, 1 threads, median of 2 rounds"
    )
    rows = table_rows(lines, "| recipe |")
    assert [row[0] for row in rows] == ["elpv_demo", "cpu"]
    first_train, first_infer = float(rows[0][2]), float(rows[0][4])
    assert rows[0][3] == rows[0][5] == "1.00"
    for _, _, train, train_ratio, infer, infer_ratio in rows:
        assert float(train) > 0 and abs(float(train_ratio) - float(train) / first_train) < 0.01
        assert float(infer) > 0 and abs(float(infer_ratio) - float(infer) / first_infer) < 0.01


def test_the_recipe_bench_trains_the_segmenter_of_a_learned_residual_as_training_step_does():
    bench_recipes = load_script("bench_recipes")
    module = bench_recipes.recipe_module("cpu", channels=3, size=32, quick=True)
    assert module.scorer.segmenter is not None  # the cpu recipe scores with the default learned residual
    segmenter, autoencoder = module.scorer.segmenter.head.weight, module.autoencoder.stem[0].weight
    before = segmenter.detach().clone(), autoencoder.detach().clone()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    step = bench_recipes.module_training_step(module, optimizer, torch.Generator().manual_seed(0))
    step({"image": torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)})
    assert not torch.equal(segmenter, before[0]) and not torch.equal(autoencoder, before[1])

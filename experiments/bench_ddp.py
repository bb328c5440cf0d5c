"""Training throughput of one CPU process vs two DDP processes (gloo), side by side in one run.

Run: PYTHONPATH=. python experiments/bench_ddp.py   (about two minutes on 2 CPU cores)

Each case trains the same tiny model on the same generated images for --steps optimizer steps with a
per-process batch of --batch; the first --warmup steps (process start, gloo handshake, allocator) are
not timed. Cases are interleaved over --rounds, so load changes on a shared machine hit every case alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = ((1, 1), (2, 1))  # (processes, torch threads per process): one core vs two


class StepTimer:
    """Lightning callback: wall time from the start of step `warmup` to the end of training."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.seconds = warmup, None, None

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_end(self, trainer, *args) -> None:
        self.seconds = time.perf_counter() - self.start


def train(args: argparse.Namespace) -> None:
    """One case; with --devices 2 Lightning starts the second process by running this script again."""
    import lightning as L
    import torch
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Callback

    from anomaly_ae.cli.train import build_module
    from tests.conftest import compose_config, tiny_overrides

    torch.set_num_threads(args.threads)
    overrides = tiny_overrides(Path(args.root), Path(args.root) / "unused")
    overrides += [f"data.batch_size={args.batch}", "data.image_size=64", "model.width=16", "model.depth=3"]
    cfg = compose_config(overrides)
    L.seed_everything(0, workers=True, verbose=False)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    timer = type("Timer", (StepTimer, Callback), {})(args.warmup)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=args.devices,
        strategy="ddp" if args.devices > 1 else "auto",
        max_steps=args.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=datamodule)
    if trainer.is_global_zero:
        images = (args.steps - args.warmup) * args.batch * args.devices
        print("RESULT " + json.dumps({"images_per_s": images / timer.seconds, "seconds": timer.seconds}))


def run_case(args: argparse.Namespace, root: Path, devices: int, threads: int) -> float:
    env = os.environ | {"OMP_NUM_THREADS": str(threads), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, __file__, "--worker", "--root", str(root), "--devices", str(devices)]
    command += ["--threads", str(threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    command += ["--batch", str(args.batch)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"case devices={devices} threads={threads} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])["images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8, help="images per process and step")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return train(args)

    from tests.conftest import make_mvtec_tree

    with tempfile.TemporaryDirectory() as folder:
        root = make_mvtec_tree(Path(folder), size=64, n_train=64, n_good=2, n_defect=2, channels=3)
        rates: dict[tuple[int, int], list[float]] = {case: [] for case in CASES}
        for _ in range(args.rounds):
            for devices, threads in CASES:
                rates[(devices, threads)].append(run_case(args, root, devices, threads))
    base = max(rates[CASES[0]])
    print(f"tiny model (width 16, depth 3), 64x64 RGB, batch {args.batch} per process, cpu, gloo")
    timed = args.steps - args.warmup
    print(f"{timed} timed steps after {args.warmup}, best of {args.rounds} interleaved rounds")
    print(f"{'processes x threads':<22}{'images/s':>10}{'x 1x1':>8}")
    for (devices, threads), values in rates.items():
        print(f"{f'{devices} x {threads}':<22}{max(values):>10.1f}{max(values) / base:>8.2f}")


if __name__ == "__main__":
    main()

"""Does decoding starve training? Data-loading throughput (cache off / on) next to the training step's.

Run: PYTHONPATH=. python experiments/bench_data.py   (about four minutes on 2 CPU cores, half generating)

Data: a generated MVTec-layout tree of 200 RGB PNGs of --source px (MVTec AD photos are 700-1024 px),
served at 256x256 RGB by MVTecDataModule's train loader (batch 16, --workers worker processes).
Training: ConvAutoencoder(3), forward + backward + Adam step, batch 16 at 256x256.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from anomaly_ae.data.mvtec import MVTecDataModule
from anomaly_ae.model.autoencoder import ConvAutoencoder

BATCH, SIZE = 16, 256


def make_tree(root: Path, n: int, source: int) -> Path:
    """root/bench/{train/good: n images, test/good: 2} of smooth colour fields plus sensor-like noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:source, :source] / source
    for folder, count in (("train/good", n), ("test/good", 2)):
        (root / "bench" / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            phase = rng.uniform(0, 2 * np.pi, 3)
            field = np.stack([np.sin(2 * np.pi * (x * (c + 1) + y) + phase[c]) for c in range(3)], axis=-1)
            # Noise keeps PNG from compressing to nothing: decode cost like a real photo's.
            image = 127 + 80 * field + rng.normal(0, 6, field.shape)
            path = root / "bench" / folder / f"{i:03d}.png"
            # Level 1 writes 10x faster; inflating (what loading pays) costs about the same at any level.
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, compress_level=1)
    return root


def loading_throughput(root: Path, cache: bool, workers: int, epochs: int) -> tuple[float, float]:
    """(setup seconds, images/s through the train DataLoader over `epochs` epochs after a warm-up one)."""
    dm = MVTecDataModule(
        str(root),
        "bench",
        image_size=SIZE,
        batch_size=BATCH,
        num_workers=workers,
        val_fraction=0.0,
        cache=cache,
    )
    start = time.perf_counter()
    dm.setup("fit")  # the check decodes every file; with cache=true it also keeps them
    setup_s = time.perf_counter() - start
    loader = dm.train_dataloader()
    for _ in loader:  # warm-up: starts the persistent workers
        pass
    count, start = 0, time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            count += len(batch["image"])
    return setup_s, count / (time.perf_counter() - start)


def training_throughput(steps: int, device: str) -> float:
    """Images/s of ConvAutoencoder(3) forward + backward + Adam step at batch 16, 256x256."""
    model = ConvAutoencoder(3).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    images = torch.rand(BATCH, 3, SIZE, SIZE, device=device)

    def step() -> None:
        loss = F.mse_loss(model(images), images)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(2):  # warm-up: allocator, cuDNN autotuning
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
    return steps * BATCH / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--source", type=int, default=1024, help="side of the generated PNGs in px")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (conf/data/mvtec.yaml: 2)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    train = training_throughput(args.steps, args.device)
    print(f"training step ({args.device}, torch threads {torch.get_num_threads()}): {train:8.1f} images/s")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        root = make_tree(Path(tmp), args.images, args.source)
        print(f"generated {args.images} RGB PNGs of {args.source} px in {time.perf_counter() - start:.0f} s")
        print(f"{'data loading':<24}{'setup s':>9}{'images/s':>11}{'x training':>12}")
        for cache in (False, True):
            setup_s, rate = loading_throughput(root, cache, args.workers, args.epochs)
            name = f"cache={str(cache).lower()}, {args.workers} workers"
            print(f"{name:<24}{setup_s:9.1f}{rate:11.1f}{rate / train:11.1f}x")


if __name__ == "__main__":
    main()

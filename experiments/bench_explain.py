"""Cost of explaining one 256x256 image, against one forward + backward pass of the default model.

Run: PYTHONPATH=. python experiments/bench_explain.py   (about a minute on 2 CPU cores; faster on a GPU)
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from anomaly_ae.explain import Method, explain
from anomaly_ae.explain.rules import COMPOSITES
from anomaly_ae.model.autoencoder import architecture
from anomaly_ae.model.scorer import AnomalyScorer

CONF = Path(__file__).resolve().parents[1] / "conf"


def forward_backward(scorer: AnomalyScorer, images: torch.Tensor) -> None:
    """The reference: reconstruction loss forward and backward to every parameter, as in a training step."""
    scorer.autoencoder.zero_grad(set_to_none=True)
    reconstructions = scorer.autoencoder(images)
    (reconstructions - images).pow(2).mean().backward()


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = instantiate(architecture(OmegaConf.load(CONF / "model" / "conv_ae.yaml")), in_channels=3)
    scorer = AnomalyScorer(model.to(device), sigma=4.0)  # eval mode, as when explaining
    images = torch.rand(1, 3, args.size, args.size, device=device)

    cases = {"forward+backward": lambda: forward_backward(scorer, images)}
    methods = [Method(n, composite=n) for n in COMPOSITES]
    methods += [Method("gradient", kind="gradient"), Method("gradient_x_input", kind="gradient_x_input")]
    for method in methods:
        cases[method.name] = lambda m=method: explain(scorer, images, m)
    # The same composite with the layers' own (discarded) backward left in: zennit as is.
    first = methods[0]
    cases[f"{first.name} (no shortcut)"] = lambda: explain(scorer, images, first, shortcut=False)
    for fn in cases.values():  # warm-up: allocator, kernels, zennit hook set-up
        fn()
    seconds = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit every case alike
        for name, fn in cases.items():
            seconds[name].append(timed(fn, device))

    reference = statistics.median(seconds["forward+backward"])
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"default model ({params:.1f} M parameters), one {args.size}x{args.size} RGB image, {device}, "
          f"torch threads {torch.get_num_threads()}, median of {args.repeats}")  # fmt: skip
    print(f"{'case':32s} {'ms':>9s} {'x fwd+bwd':>10s}")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"{name:32s} {1000 * median:9.1f} {median / reference:10.2f}")


if __name__ == "__main__":
    main()

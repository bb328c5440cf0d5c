"""Inference cost of each score.residual option, side by side on the same model and images.

Run: PYTHONPATH=. python experiments/bench_score.py                 (elpv_demo model, 128 px, batch 32)
     PYTHONPATH=. python experiments/bench_score.py --quick         (seconds)

What is timed: `AnomalyScorer.forward` (autoencoder, residual, per-pixel normalisation, smoothing, score) in
eval mode under `torch.inference_mode`, on random images already in memory, with the `experiment=elpv_demo`
architecture (width 16, max width 128, no skips, sigmoid output, 3x3 downsampling, bilinear upsampling).
The options are timed in interleaved rounds, so that a change of machine load hits all of them alike; the
table gives the median images/s per option and its ratio to `squared`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from anomaly_ae.model.autoencoder import ConvAutoencoder
from anomaly_ae.model.scorer import AnomalyScorer
from anomaly_ae.model.scoring import RESIDUALS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="32 px, batch 2, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.rounds = 32, 2, 2
    torch.manual_seed(0)
    autoencoder = ConvAutoencoder(
        width=16, max_width=128, skips=False, output="sigmoid", down_kernel=3, upsample="bilinear"
    ).eval()
    images = torch.rand(args.batch, 3, args.size, args.size)
    scorers = {
        kind: AnomalyScorer(autoencoder, 2.0, image_size=args.size, normalize="pixel", residual=kind).eval()
        for kind in RESIDUALS
    }
    rates: dict[str, list[float]] = {kind: [] for kind in RESIDUALS}
    with torch.inference_mode():
        for scorer in scorers.values():
            scorer(images)  # warm-up
        for _ in range(args.rounds):
            for kind, scorer in scorers.items():
                start = time.perf_counter()
                scorer(images)
                rates[kind].append(args.batch / (time.perf_counter() - start))
    base = statistics.median(rates["squared"])
    print(f"{args.size} px, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.rounds}")
    print("| score.residual | images/s | vs squared |")
    print("|---|---|---|")
    for kind, values in rates.items():
        rate = statistics.median(values)
        print(f"| {kind} | {rate:.1f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()

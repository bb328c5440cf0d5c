"""Training and inference throughput of whole recipes (model, corruption, loss, score), side by side.

Run: PYTHONPATH=. python experiments/bench_recipes.py            (experiment=cpu against elpv_demo, 128 px)
     PYTHONPATH=. python experiments/bench_recipes.py --quick    (seconds)
     PYTHONPATH=. python experiments/bench_recipes.py --recipe elpv_demo --recipe cpu \
         --recipe "cpu score.residual=squared_and_gradient"     (a recipe: its name, then overrides)

Each recipe is the real composed config (`experiment=<name>`) turned into the `AnomalyAE` that `train`
builds, so its model, corruption, loss and score are the recipe's own; only the input is shared: smooth
random uint8 images in memory, `--channels` channels at `--size` px, so the recipes are compared at the same
size. Training: the module's work per step (flips, on-device corruption, forward, loss, backward, Adam) in a
bare loop, as `experiments/bench_train.py` times it. Inference: `AnomalyAE.forward` (autoencoder, residual,
normalisation, smoothing, image score) in eval mode under `torch.inference_mode`. The recipes take turns
for `--rounds` rounds, so that load changes on a shared machine hit them alike; the table gives medians and
the ratio to the first recipe (the reference).
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
from hydra import compose, initialize_config_dir
from torch.utils.data import DataLoader

from anomaly_ae.cli.train import build_module
from anomaly_ae.data.images import as_float
from anomaly_ae.training.module import AnomalyAE
from experiments.bench_train import AUGMENT, CONF, InMemoryImages, module_training_step, time_steps


def recipe_module(recipe: str, channels: int, size: int, quick: bool) -> AnomalyAE:
    """`recipe`: an experiment name, then optional space-separated overrides."""
    name, *extra = recipe.split()
    overrides = [f"experiment={name}", f"data.image_size={size}", *extra]
    if quick:
        overrides += ["model.width=4", "model.max_width=8", "model.depth=2", "model.dilations=[1,2]"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    data = SimpleNamespace(augment=AUGMENT, channels=channels, image_size=size, has_masks=True)
    return build_module(cfg, data)


def training_seconds(module: AnomalyAE, loader: DataLoader, warmup: int) -> float:
    """Seconds per training step of `module` (what on_after_batch_transfer + training_step do)."""
    optimizer = torch.optim.Adam(module.parameters(), lr=module.hparams.optim["lr"])
    step = module_training_step(module, optimizer, torch.Generator().manual_seed(0))
    return time_steps(loader, step, warmup, "cpu")


def inference_seconds(module: AnomalyAE, images: torch.Tensor) -> float:
    module.eval()
    with torch.inference_mode():
        module(images[:2])  # warm-up
        start = time.perf_counter()
        module(images)
        return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe", action="append",
        help="an experiment name and its overrides, repeated; ratios vs the first (default: elpv_demo, cpu)",
    )  # fmt: skip
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16, help="training batch (the quality suite's)")
    parser.add_argument("--infer-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per recipe and round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny models at 32 px, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.infer_batch, args.steps, args.rounds = 32, 4, 4, 2, 2
    names = args.recipe or ["elpv_demo", "cpu"]
    modules = {name: recipe_module(name, args.channels, args.size, args.quick) for name in names}
    data = InMemoryImages(args.batch * (args.warmup + args.steps), args.channels, args.size)
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True)
    images = as_float(InMemoryImages(args.infer_batch, args.channels, args.size).images)
    train: dict[str, list[float]] = {name: [] for name in names}
    infer: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(args.rounds):
        for name, module in modules.items():
            train[name].append(args.batch / training_seconds(module, loader, args.warmup))
            infer[name].append(args.infer_batch / inference_seconds(module, images))
    print(
        f"{args.size} px x {args.channels} channels, training batch {args.batch}, inference batch "
        f"{args.infer_batch}, {torch.get_num_threads()} threads, median of {args.rounds} rounds"
    )
    print("| recipe | parameters (M) | train images/s | x first | inference images/s | x first |")
    print("|---|---|---|---|---|---|")
    first_train, first_infer = statistics.median(train[names[0]]), statistics.median(infer[names[0]])
    for name, module in modules.items():
        rate, served = statistics.median(train[name]), statistics.median(infer[name])
        params = sum(p.numel() for p in module.parameters()) / 1e6
        print(
            f"| {name} | {params:.2f} | {rate:.1f} | {rate / first_train:.2f} | {served:.1f} "
            f"| {served / first_infer:.2f} |"
        )


if __name__ == "__main__":
    main()

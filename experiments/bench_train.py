"""Training-step cost of the corruption (on the device vs in loader workers) and of Lightning's loop.

Run: PYTHONPATH=. python experiments/bench_train.py          (about 10 minutes on 2 CPU cores)
     PYTHONPATH=. python experiments/bench_train.py --quick  (seconds: tiny model, 32 px)

Model: the default `conf/model/conv_ae.yaml` (3 channels), corruption: the default
`conf/corruption/paper.yaml`, Adam, MSE; batch 8 at 256x256 from an in-memory uint8 dataset. Every case
runs `--steps` timed steps after `--warmup` untimed ones, and the cases take turns for `--rounds` rounds,
so load changes on a shared machine hit them alike; the table reports the median round.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, get_worker_info

from anomaly_ae.cli.train import QUIET
from anomaly_ae.data.images import as_float
from anomaly_ae.model.autoencoder import architecture
from anomaly_ae.model.loss import reconstruction_loss
from anomaly_ae.training.module import AnomalyAE, augment

CONF = Path(__file__).resolve().parents[1] / "conf"
AUGMENT = {"hflip": True, "vflip": True, "rot90": False}  # conf/data/textures.yaml


class InMemoryImages(Dataset):
    """n smooth random uint8 images (C, size, size), as a cached datamodule serves them."""

    def __init__(self, n: int, channels: int, size: int) -> None:
        coarse = torch.rand(n, channels, 8, 8, generator=torch.Generator().manual_seed(0))
        smooth = torch.nn.functional.interpolate(
            coarse, size=(size, size), mode="bicubic", align_corners=False
        )
        self.images = (smooth.clamp(0, 1) * 255).to(torch.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"image": self.images[index]}


class CorruptedInWorkers(Dataset):
    """The same corruption, per image inside the DataLoader workers (the usual CPU-side alternative)."""

    def __init__(self, images: InMemoryImages, corruption: torch.nn.Module) -> None:
        self.images, self.corruption = images, corruption
        self.generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if self.generator is None:  # one stream per worker, seeded by the DataLoader
            info = get_worker_info()
            self.generator = torch.Generator().manual_seed(info.seed if info else 0)
        image = as_float(self.images[index]["image"])[None]
        image = augment(image, **AUGMENT)
        # A batch of one: the "batch" fill source falls back to the image itself.
        corrupted, mask = self.corruption(image, self.generator)
        return {"image": image[0], "input": corrupted[0], "target": image[0], "corruption_mask": mask[0]}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def model_config(quick: bool) -> dict:
    model = architecture(OmegaConf.to_container(OmegaConf.load(CONF / "model/conv_ae.yaml")))
    if quick:
        model |= {"width": 4, "depth": 2, "dilations": [1, 2]}
    return model


def time_steps(loader: DataLoader, step: Callable[[dict], None], warmup: int, device: str) -> float:
    """Seconds per step over the batches after the first `warmup` ones (data loading included)."""
    start = 0.0
    for index, batch in enumerate(loader):
        if index == warmup:
            sync(device)
            start = time.perf_counter()
        step({k: v.to(device, non_blocking=True) for k, v in batch.items()})
    sync(device)
    return (time.perf_counter() - start) / (len(loader) - warmup)


def training_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> Callable[[Tensor, Tensor], None]:
    def step(inputs: Tensor, targets: Tensor) -> None:
        loss = reconstruction_loss(model(inputs), targets, targets[:, :1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def module_training_step(
    module: AnomalyAE, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> Callable[[dict], None]:
    """A bare-loop step doing the work of `module`'s on_after_batch_transfer + training_step."""
    module.train()

    def step(batch: dict) -> None:
        images = augment(as_float(batch["image"]), **AUGMENT, generator=generator)
        target, corrupted, mask = images, images, torch.zeros_like(images[:, :1])
        if module.corruption is not None:
            target = module.corruption.anchor_noise(images, generator)
            corrupted, mask = module.corruption(target, generator)
        loss, _ = module.training_loss({"input": corrupted, "target": target, "corruption_mask": mask})
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def corruption_cases(args: argparse.Namespace, data: InMemoryImages) -> dict[str, float]:
    """Seconds per step for: no corruption, corruption on the device, corruption in loader workers."""
    corruption = instantiate(OmegaConf.load(CONF / "corruption/paper.yaml")).to(args.device)
    generator = torch.Generator(device=args.device).manual_seed(0)
    model = instantiate(model_config(args.quick), in_channels=args.channels).to(args.device)
    step = training_step(model, torch.optim.Adam(model.parameters(), lr=2e-4))
    plain = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True)
    workers = DataLoader(
        CorruptedInWorkers(data, instantiate(OmegaConf.load(CONF / "corruption/paper.yaml"))),
        batch_size=args.batch, shuffle=True, drop_last=True, num_workers=args.workers,
        persistent_workers=args.workers > 0,
    )  # fmt: skip

    def none(batch: dict) -> None:
        images = augment(as_float(batch["image"]), **AUGMENT)
        step(images, images)

    def on_device(batch: dict) -> None:  # what AnomalyAE.on_after_batch_transfer does in training
        images = augment(as_float(batch["image"]), **AUGMENT)
        target = corruption.anchor_noise(images, generator)
        corrupted, _ = corruption(target, generator)
        step(corrupted, target)

    def in_workers(batch: dict) -> None:
        step(batch["input"], batch["target"])

    def corruption_alone(batch: dict) -> None:
        images = augment(as_float(batch["image"]), **AUGMENT)
        corruption(corruption.anchor_noise(images, generator), generator)

    cases = {
        "none": (plain, none),
        "on device (as the module)": (plain, on_device),
        f"in {args.workers} loader workers": (workers, in_workers),
        "corruption alone, on device": (plain, corruption_alone),
    }
    return median_rounds(cases, args)


def lightning_cases(args: argparse.Namespace, data: InMemoryImages) -> dict[str, float]:
    """Seconds per step: AnomalyAE under Trainer.fit (no logger, bar or checkpoints) vs a bare loop."""
    hparams = dict(
        model=model_config(args.quick),
        corruption=OmegaConf.to_container(OmegaConf.load(CONF / "corruption/paper.yaml")),
        optim={
            "lr": 2e-4,
            "betas": [0.9, 0.999],
            "weight_decay": 0.0,
            "scheduler": "none",
            "warmup_steps": 0,
        },
        score={"sigma": 4.0, "reduction": "max", "topk": 100},
        loss={"clean_weight": None},
        augment=AUGMENT,
        in_channels=args.channels,
    )
    loader = DataLoader(data, batch_size=args.batch, shuffle=True, drop_last=True)

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            if batch_idx == args.warmup:
                sync(args.device)
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if batch_idx < args.warmup:
                return
            sync(args.device)
            self.seconds = (time.perf_counter() - self.start) / (batch_idx + 1 - args.warmup)

    def lightning(_: dict) -> float:
        timer = StepTimer()
        trainer = L.Trainer(
            accelerator=args.device, devices=1, max_steps=len(loader), logger=False, callbacks=[timer],
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            limit_val_batches=0, num_sanity_val_steps=0,
        )  # fmt: skip
        trainer.fit(AnomalyAE(**hparams), train_dataloaders=loader)
        return timer.seconds

    def bare(_: dict) -> float:
        module = AnomalyAE(**hparams).to(args.device)
        generator = torch.Generator(device=args.device).manual_seed(0)
        step = module_training_step(module, module.configure_optimizers(), generator)
        return time_steps(loader, step, args.warmup, args.device)

    return median_rounds(
        {"bare PyTorch loop": (None, bare), "Lightning Trainer.fit": (None, lightning)}, args
    )


def median_rounds(cases: dict, args: argparse.Namespace) -> dict[str, float]:
    """Run the cases in turn for `args.rounds` rounds; the median seconds per step of each."""
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.rounds):
        for name, (loader, step) in cases.items():
            if loader is None:  # the case times itself
                seconds[name].append(step({}))
            else:
                seconds[name].append(time_steps(loader, step, args.warmup, args.device))
    return {name: statistics.median(values) for name, values in seconds.items()}


def print_table(title: str, seconds_per_step: dict[str, float], reference: str, batch: int) -> None:
    """A Markdown table of images/s, ms/step and speed relative to the `reference` case."""
    short = reference.split()[0]
    print(f"\n| {title} | images/s | ms/step | x {short} |\n|---|---|---|---|")
    for name, seconds in seconds_per_step.items():
        ratio = seconds_per_step[reference] / seconds
        print(f"| {name} | {batch / seconds:.2f} | {1000 * seconds:.1f} | {ratio:.3f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case and round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the worker case")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny model at 32 px, 1 round: seconds")
    args = parser.parse_args(argv)
    for message in (*QUIET, "You defined a `validation_step` but have no `val_dataloader`"):  # by design here
        warnings.filterwarnings("ignore", message=message)
    if args.quick:
        args.size, args.batch, args.steps, args.rounds, args.workers = 32, 4, 2, 1, 1
    data = InMemoryImages(args.batch * (args.warmup + args.steps), args.channels, args.size)
    model = instantiate(model_config(args.quick), in_channels=args.channels)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    print(
        f"model {params:.2f} M parameters{' (quick: tiny)' if args.quick else ''}, batch {args.batch} at "
        f"{args.size}x{args.size}x{args.channels}, {args.device}, torch threads {torch.get_num_threads()}, "
        f"median of {args.rounds} rounds x {args.steps} steps"
    )
    corrupt = corruption_cases(args, data)
    none = corrupt["none"]
    steps = {name: seconds for name, seconds in corrupt.items() if name != "corruption alone, on device"}
    print_table("corruption", steps, "none", args.batch)
    alone, device_step = corrupt["corruption alone, on device"], corrupt["on device (as the module)"]
    print(
        f"\non-device corruption (timed alone, with loading and flips): {1000 * alone:.1f} ms per batch = "
        f"{100 * alone / device_step:.1f} % of a corrupted training step (target < 10 %); "
        f"step time difference against none: {100 * (1 - none / device_step):+.1f} %"
    )
    loop = lightning_cases(args, data)
    bare = loop["bare PyTorch loop"]
    print_table("training loop", loop, "bare PyTorch loop", args.batch)
    overhead = 100 * (loop["Lightning Trainer.fit"] / bare - 1)
    print(f"\nLightning overhead: {overhead:+.1f} % per step (target < 5 %)")


if __name__ == "__main__":
    main()

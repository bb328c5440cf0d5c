"""The prepared GPU check: GPU tests, then speed, memory, FLOP/s, explanation cost and quality, in one go.

Run: bash experiments/gpu_check.sh                                  (a GPU machine without network; < 8 min)
     PYTHONPATH=. python experiments/gpu_check.py --pytest          (the same, with the packages installed)
     PYTHONPATH=. python experiments/gpu_check.py --device cpu --quick   (tiny model at 32 px: the test)

On `data=textures` (category brick) at 256 px with the default model (`conf/model/conv_ae.yaml`, the
`trainer=gpu` defaults): training images/s under `Trainer.fit` in fp32, bf16 and bf16 + torch.compile,
each with the device-resident data path and with the DataLoader, and the peak GPU memory of each; the
same step in Lightning and in a bare loop (`bench_train.lightning_cases`); achieved FLOP/s of the bf16
training step against a bf16 matmul timed in this process (`bench_inference.matmul_flops_per_s`);
inference images/s at batch 1 and 64 through `Detector`; the cost of explaining one image with
`epsilon_plus_flat` as a multiple of forward+backward (`bench_explain`); and a short training run's test
metrics. Writes gpu_check.json and gpu_check.md to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
from argparse import Namespace
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench_* modules beside this file
import bench_explain  # noqa: E402
import bench_inference  # noqa: E402
import bench_train  # noqa: E402

from anomaly_ae.cli.common import CONF_DIR  # noqa: E402
from anomaly_ae.cli.train import QUIET, build_module, fit, make_trainer  # noqa: E402
from anomaly_ae.inference.detector import Detector  # noqa: E402
from anomaly_ae.reporting.console import quiet_library_messages  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.width=4", "model.depth=2", "model.dilations=[1,2]", "score.sigma=1"]  # --quick


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def config(args: Namespace, *overrides: str):
    """The real config for data=textures on `args.device`, as `python -m anomaly_ae.run` composes it."""
    base = [
        "data=textures",
        "category=brick",
        f"data.root={args.out / 'data/textures'}",
        f"seed={args.seed}",
        f"data.image_size={args.size}",
        f"data.batch_size={args.batch}",
        "logger=none",
        "trainer=gpu" if args.device == "cuda" else "trainer=cpu",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        f"output_dir={args.out / 'runs'}",
    ]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=base + (TINY if args.quick else []) + list(overrides))


class StepTimer(L.Callback):
    """Seconds of the training steps after the first `warmup` (compilation, cuDNN autotuning) ones."""

    def __init__(self, warmup: int, device: str) -> None:
        self.warmup, self.device, self.start, self.steps, self.seconds = warmup, device, 0.0, 0, 0.0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup:
            sync(self.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer, module) -> None:
        sync(self.device)
        self.seconds, self.steps = time.perf_counter() - self.start, trainer.global_step - self.warmup


def train_speed(args: Namespace, precision: str, compiled: bool, resident: bool) -> dict:
    """Images/s and peak memory of `Trainer.fit` steps (no validation, no checkpoints) for one case."""
    cfg = config(
        args,
        f"trainer.precision={precision}",
        f"model.compile={str(compiled).lower()}",
        f"data.resident={str(resident).lower()}",
        "trainer.max_epochs=-1",
        "+trainer.limit_val_batches=0",
        f"+trainer.max_steps={args.warmup + args.steps}",
        "+trainer.enable_checkpointing=false",
    )
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    module = build_module(cfg, datamodule)
    timer = StepTimer(args.warmup, args.device)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    make_trainer(cfg, [timer]).fit(module, datamodule=datamodule)
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    return {
        "images_per_s": timer.steps * args.batch / timer.seconds,
        "steps": timer.steps,
        "peak_gpu_mib": peak,
        "channels": datamodule.channels,
    }


def training_flops_per_image(args: Namespace, channels: int) -> float:
    """FLOPs of one image's forward + backward through the default autoencoder (convs and matmuls)."""
    model = instantiate(bench_train.model_config(args.quick), in_channels=channels).to(args.device)
    images = torch.rand(1, channels, args.size, args.size, device=args.device)
    with FlopCounterMode(display=False) as counter:
        (model(images) - images).pow(2).mean().backward()
    return counter.get_total_flops()


def inference_speed(detector: Detector, args: Namespace, channels: int) -> dict[str, float]:
    """Images/s through Detector.predict (preprocessing, scorer, maps back to the host) at batch 1 and 64."""
    images = torch.rand(64, channels, args.size, args.size, device=args.device)
    result = {}
    for batch in (1, 64):
        chunk = images[:batch]
        detector.predict(chunk, batch_size=batch)  # warm-up
        runs, start = 0, time.perf_counter()
        while runs < 2 or (time.perf_counter() - start < args.seconds and runs < 200):
            detector.predict(chunk, batch_size=batch)  # returns maps on the host: synchronised
            runs += 1
        result[f"batch_{batch}_images_per_s"] = batch * runs / (time.perf_counter() - start)
    return result


def explanation_cost(detector: Detector, args: Namespace, channels: int) -> dict[str, float]:
    """Median seconds of epsilon_plus_flat on one image, and as a multiple of forward+backward."""
    from anomaly_ae.explain import Method, explain

    scorer, device = detector.scorer, torch.device(args.device)
    images = torch.rand(1, channels, args.size, args.size, device=device)
    method = Method("epsilon_plus_flat", composite="epsilon_plus_flat")
    cases = {
        "forward+backward": lambda: bench_explain.forward_backward(scorer, images),
        "epsilon_plus_flat": lambda: explain(scorer, images, method),
    }
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(args.repeats):  # interleaved, as in bench_explain
        for name, fn in cases.items():
            seconds[name].append(bench_explain.timed(fn, device))
    reference, lrp = (statistics.median(seconds[name]) for name in cases)
    return {
        "forward_backward_ms": 1000 * reference,
        "epsilon_plus_flat_ms": 1000 * lrp,
        "ratio": lrp / reference,
    }


def run_pytest(args: Namespace) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=args.pytest_timeout,
    )
    lines = done.stdout.strip().splitlines()
    return {"returncode": done.returncode, "summary": lines[-1] if lines else done.stderr[-500:]}


def check(args: Namespace) -> dict:
    report: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "torch": torch.__version__,
        "commit": commit(),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    if args.pytest:
        report["gpu_tests"] = run_pytest(args)
    cases = [
        ("fp32", "32-true", False),
        ("bf16", "bf16-mixed", False),
        ("bf16 + compile", "bf16-mixed", True),
    ]
    training = {}
    for name, precision, compiled in cases:
        for resident in (True, False):
            label = f"{name}, {'resident' if resident else 'DataLoader'}"
            if compiled and args.quick:  # inductor on a CPU needs a C++ toolchain and minutes
                training[label] = {"skipped": "--quick"}
                continue
            training[label] = train_speed(args, precision, compiled, resident)
    report["training"] = training
    channels = training["bf16, resident"]["channels"]
    loop_args = Namespace(
        device=args.device,
        batch=args.batch,
        warmup=args.warmup,
        steps=args.steps,
        rounds=1,
        quick=args.quick,
        channels=channels,
        size=args.size,
    )
    data = bench_train.InMemoryImages(args.batch * (args.warmup + args.steps), channels, args.size)
    loop = bench_train.lightning_cases(loop_args, data)  # fp32, random images, the same model
    report["loop"] = {
        "bare_ms": 1000 * loop["bare PyTorch loop"],
        "lightning_ms": 1000 * loop["Lightning Trainer.fit"],
        "lightning_share_of_bare_speed": loop["bare PyTorch loop"] / loop["Lightning Trainer.fit"],
    }
    flops = training_flops_per_image(args, channels)
    matmul = bench_inference.matmul_flops_per_s(args.matmul, Namespace(device=args.device, amp=True))
    achieved = flops * training["bf16, resident"]["images_per_s"]
    report["flops"] = {
        "train_flops_per_image": flops,
        "achieved_flops_per_s": achieved,
        "bf16_matmul_flops_per_s": matmul,
        "fraction_of_matmul": achieved / matmul,
    }

    start = time.perf_counter()
    metrics = fit(config(args, f"trainer.max_epochs={args.epochs}", "trainer.check_val_every_n_epoch=1"))
    report["short_run"] = {
        "epochs": args.epochs,
        "seconds": time.perf_counter() - start,
        **{k: v for k, v in metrics.items() if k.startswith("test/")},
    }
    checkpoint = next(
        (args.out / "runs/checkpoints").glob("best.ckpt"), args.out / "runs/checkpoints/last.ckpt"
    )
    detector = Detector.load(checkpoint, device=args.device)
    report["inference"] = inference_speed(detector, args, channels)
    report["explanation"] = explanation_cost(detector, args, channels)
    if args.device == "cuda":
        report["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return report


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def markdown(report: dict) -> str:
    """One table: every figure of the report, with what it is."""
    rows = [
        ("date", report["date"]),
        ("device", report["device"]),
        ("torch", report["torch"]),
        ("commit", report["commit"]),
    ]
    if "gpu_tests" in report:
        rows.append(("pytest -m gpu", report["gpu_tests"]["summary"]))
    for name, case in report["training"].items():
        value = case.get("skipped") or f"{case['images_per_s']:.1f} images/s"
        if case.get("peak_gpu_mib") is not None:
            value += f", peak {case['peak_gpu_mib']:.0f} MiB"
        rows.append((f"training, {name}", value))
    loop = report["loop"]
    rows.append(
        (
            "Lightning step / bare-loop step (fp32)",
            f"{loop['lightning_ms']:.2f} / {loop['bare_ms']:.2f} ms "
            f"= {100 * loop['lightning_share_of_bare_speed']:.1f} % of the bare loop's speed",
        )
    )
    flops = report["flops"]
    rows.append(
        (
            "achieved FLOP/s, bf16 resident training",
            f"{flops['achieved_flops_per_s'] / 1e12:.3f} TFLOP/s = "
            f"{100 * flops['fraction_of_matmul']:.1f} % of a bf16 matmul "
            f"({flops['bf16_matmul_flops_per_s'] / 1e12:.1f} TFLOP/s)",
        )
    )
    for batch in (1, 64):
        value = report["inference"][f"batch_{batch}_images_per_s"]
        rows.append((f"inference through Detector, batch {batch}", f"{value:.1f} images/s"))
    explanation = report["explanation"]
    rows.append(
        (
            "epsilon_plus_flat / forward+backward",
            f"{explanation['ratio']:.2f} x "
            f"({explanation['epsilon_plus_flat_ms']:.1f} / {explanation['forward_backward_ms']:.1f} ms)",
        )
    )
    if "peak_gpu_mib" in report:
        rows.append(("peak GPU memory, whole check", f"{report['peak_gpu_mib']:.0f} MiB"))
    short = report["short_run"]
    for key in ("test/image_auroc", "test/pixel_auroc", "test/pixel_aupro"):
        rows.append(
            (f"short run ({short['epochs']} epochs, {short['seconds']:.0f} s): {key}", f"{short[key]:.4f}")
        )
    return "| measure | value |\n|---|---|\n" + "".join(f"| {name} | {value} |\n" for name, value in rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny model at 32 px, few steps: seconds on a CPU"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "outputs/gpu_check")
    parser.add_argument("--pytest", action="store_true", help="run `pytest -m gpu` first")
    parser.add_argument("--pytest-timeout", type=int, default=180)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16, help="data.batch_size (the config's default: 16)")
    parser.add_argument("--steps", type=int, default=150, help="timed training steps per case")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before them")
    parser.add_argument(
        "--epochs", type=int, default=20, help="epochs of the short run that gives test metrics"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="time each inference batch size this long")
    parser.add_argument("--repeats", type=int, default=10, help="timed explanations")
    parser.add_argument("--matmul", type=int, default=8192, help="side of the bf16 reference matmul")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.steps, args.warmup, args.epochs = 32, 4, 2, 1, 1
        args.seconds, args.repeats, args.matmul = 0.1, 1, 256
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    quiet_library_messages(QUIET)
    report = check(args)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    table = markdown(report)
    (args.out / "gpu_check.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

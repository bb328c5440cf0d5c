"""Inference throughput, peak memory and FLOP/s of the default model, against a large matmul's FLOP/s.

Run: PYTHONPATH=. python experiments/bench_inference.py                        (CPU: a few minutes)
     PYTHONPATH=. python experiments/bench_inference.py --configs 256x1,512x1    (fewer configs)
     PYTHONPATH=. python experiments/bench_inference.py --device cuda --amp --compile
     PYTHONPATH=. python experiments/bench_inference.py --quick                  (seconds)

What is timed: what `AnomalyAE.forward` computes, in eval mode under `torch.inference_mode` (the default
`conf/model/conv_ae.yaml`, 3 channels, then the smoothed anomaly map and the image score), on random images
already on the device.
Each config runs in its own process, so its peak memory is its own: on CPU the peak RSS over the RSS with
model and input in place (the kernel's high-water mark, reset first through /proc/self/clear_refs;
tracemalloc does not see torch's allocations); on CUDA torch.cuda.max_memory_allocated over the same
baseline. FLOPs are counted by torch.utils.flop_counter.FlopCounterMode (2 per multiply-add of convs and
matmuls; elementwise ops are not counted) and set against an n x n float matmul timed in the same process,
before and after the config.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from anomaly_ae.model.autoencoder import architecture
from anomaly_ae.model.scorer import AnomalyScorer

CONF = Path(__file__).resolve().parents[1] / "conf"


def build_module(device: str) -> AnomalyScorer:
    """The default model (`conf/model/conv_ae.yaml`, 3 channels) with the default scoring, in eval mode.

    The AnomalyScorer alone, not the LightningModule: no Lightning import in every measuring process.
    """
    model = instantiate(architecture(OmegaConf.load(CONF / "model/conv_ae.yaml")), in_channels=3)
    return AnomalyScorer(model).to(device).eval()


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def autocast(args: argparse.Namespace):
    return torch.autocast(args.device, dtype=torch.bfloat16) if args.amp else nullcontext()


def reset_peak_rss() -> float:
    """Reset the peak RSS to the current RSS (Linux: /proc/self/clear_refs) and return it, in MiB.

    Without a reset, the high-water mark left by imports and model building hides smaller inference peaks.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return proc_status_mib("VmHWM")
    except OSError:  # not Linux: the growth of getrusage's maximum RSS, a lower bound
        return peak_rss_mib()


def release_free_heap() -> None:
    """Return freed heap (the matmul's buffers) to the OS, or inference would reuse it unseen by the RSS."""
    with contextlib.suppress(OSError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_mib() -> float:
    try:
        return proc_status_mib("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def proc_status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    raise OSError(f"/proc/self/status has no {field}")


def measure(size: int, batch: int, args: argparse.Namespace) -> dict:
    """One config, in this process: images/s, peak extra memory, FLOPs per image."""
    torch.manual_seed(0)
    module = build_module(args.device)
    images = torch.rand(batch, 3, size, size, device=args.device)
    if args.compile:
        module.autoencoder = torch.compile(module.autoencoder)
    reference = matmul_flops_per_s(args.matmul_side, args)  # side by side with this config, before and after
    gc.collect()
    release_free_heap()
    sync(args.device)
    baseline = torch.cuda.memory_allocated() if args.device == "cuda" else reset_peak_rss()
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode(), autocast(args):
        for _ in range(args.warmup):  # allocator, oneDNN/cuDNN kernel choice, compilation
            module(images)
        sync(args.device)
        runs, start = 0, time.perf_counter()
        while runs < 1 or (time.perf_counter() - start < args.min_seconds and runs < args.max_runs):
            module(images)
            sync(args.device)
            runs += 1
        seconds = (time.perf_counter() - start) / runs
    if args.device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - baseline) / 2**20
    else:
        peak = peak_rss_mib() - baseline
    reference = (reference + matmul_flops_per_s(args.matmul_side, args)) / 2
    # Counted last: a forward before the baseline would already have raised the maximum RSS.
    if args.compile:
        module.autoencoder = module.autoencoder._orig_mod  # the counter needs eager ops
    with torch.inference_mode(), autocast(args), FlopCounterMode(display=False) as counter:
        module(images[:1])
    flops = counter.get_total_flops()
    return {"size": size, "batch": batch, "images_per_s": batch / seconds, "ms_per_batch": 1000 * seconds,
            "peak_mib": peak, "flops_per_image": flops, "runs": runs,
            "matmul_flops_per_s": reference}  # fmt: skip


def matmul_flops_per_s(n: int, args: argparse.Namespace) -> float:
    """FLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs), the best of a few, in the benchmark's precision."""
    a, b = (torch.rand(n, n, device=args.device) for _ in range(2))
    best = float("inf")
    with torch.inference_mode(), autocast(args):
        a @ b  # warm-up
        for _ in range(5):
            sync(args.device)
            start = time.perf_counter()
            a @ b
            sync(args.device)
            best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def run_config(config: str, argv: list[str]) -> dict:
    """Measure one config in a fresh process and return its JSON line."""
    script = [sys.executable, __file__, "--child", config, *argv]
    done = subprocess.run(script, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"config {config} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="256x1,256x32,512x1,512x32", help="SIZExBATCH, comma-separated")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast (model, map and matmul)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the autoencoder")
    parser.add_argument("--warmup", type=int, default=1, help="untimed batches per config")
    parser.add_argument("--min-seconds", type=float, default=3.0, help="time each config at least this long")
    parser.add_argument("--max-runs", type=int, default=50)
    parser.add_argument("--matmul", type=int, default=None, help="matmul side (default: 2048 CPU, 8192 CUDA)")
    parser.add_argument("--quick", action="store_true", help="32 px, batches 1 and 2, 0.2 s each: seconds")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one config, in a fresh process
    args = parser.parse_args(argv)
    if args.quick:
        args.configs, args.min_seconds, args.matmul = "32x1,32x2", 0.2, 256
    args.matmul_side = args.matmul or (8192 if args.device == "cuda" else 2048)
    if args.child:
        size, batch = (int(v) for v in args.child.split("x"))
        print(json.dumps(measure(size, batch, args)))
        return

    forwarded = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--quick"]
    forwarded += ["--min-seconds", str(args.min_seconds), "--matmul", str(args.matmul_side)]
    rows = [run_config(config, forwarded) for config in args.configs.split(",")]
    precision = "bf16 autocast" if args.amp else "fp32"
    n = args.matmul_side
    print(
        f"default model, 3 channels, {args.device}, {precision}{', compiled' if args.compile else ''}, "
        f"torch threads {torch.get_num_threads()}; x matmul: against a {n}x{n} matmul timed in the same "
        "process just before and after each config"
    )
    print(
        "\n| size | batch | images/s | ms/batch | peak extra MiB | GFLOP/image | GFLOP/s | matmul GFLOP/s "
        "| x matmul |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        achieved = r["flops_per_image"] * r["images_per_s"]
        print(
            f"| {r['size']} | {r['batch']} | {r['images_per_s']:.2f} | {r['ms_per_batch']:.1f} | "
            f"{r['peak_mib']:.0f} | {r['flops_per_image'] / 1e9:.4g} | {achieved / 1e9:.1f} | "
            f"{r['matmul_flops_per_s'] / 1e9:.1f} | {achieved / r['matmul_flops_per_s']:.3f} |"
        )


if __name__ == "__main__":
    main()

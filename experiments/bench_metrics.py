"""Cost and binning error of the streamed metrics on an MVTec-AD-sized synthetic test set.

Run: PYTHONPATH=. python experiments/bench_metrics.py   (about two minutes on 2 CPU cores)
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import multiprocessing
import os
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from anomaly_ae.evaluation.metrics import ImageMetrics, PixelMetrics


def make_batch(n: int, size: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual-like maps (smoothed squared noise) and masks: 60 % of images get blobs and specks."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    masks = torch.zeros(n, size, size, dtype=torch.bool)
    for i in range(n):
        if torch.rand(1, generator=gen) < 0.4:
            continue
        for _ in range(int(torch.randint(1, 5, (1,), generator=gen))):
            cy, cx = torch.rand(2, generator=gen) * size
            ry, rx = 1 + torch.rand(2, generator=gen) * size / 8  # from a few pixels to a quarter of the side
            masks[i] |= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        specks = torch.randint(0, size, (2, 4), generator=gen)
        masks[i, specks[0], specks[1]] = True
    noise = torch.randn(n, 1, size, size, generator=gen) * 0.1
    strength = torch.rand(n, 1, 1, 1, generator=gen) * 0.15  # faint to clear defects, so AUROC < 1
    residual = (noise + masks[:, None] * strength) ** 2
    return blur(residual, size // 256 * 10 - 1)[:, 0], masks


def blur(x: torch.Tensor, k: int) -> torch.Tensor:
    """Separable box blur applied twice: sigma ~ 0.4 k, i.e. the method's 4 px at 256^2 for k = 9."""
    for _ in range(2):
        x = F.avg_pool2d(x, (k, 1), 1, (k // 2, 0), count_include_pad=False)
        x = F.avg_pool2d(x, (1, k), 1, (0, k // 2), count_include_pad=False)
    return x


def peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS mark (Linux), so ru_maxrss measures only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # elsewhere the peak also covers the imports: an overestimate


def rss_mib() -> float:
    """Current resident set size in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_cost(n_images: int, size: int, batch: int, seed: int = 0) -> dict[str, float]:
    """Stream n_images maps through PixelMetrics + ImageMetrics: metric time, peak and live extra RSS."""
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(seed)
    # A few distinct batches, cycled: making all maps would dominate the run. Each step clones its batch,
    # so tensors are fresh per step, as from a data loader.
    pool = [make_batch(batch, size, gen) for _ in range(max(2, 64 // batch))]
    peak_rss_reset()
    base, wall, cpu = rss_mib(), 0.0, 0.0
    pixel, image = PixelMetrics(), ImageMetrics()
    for step, start in enumerate(range(0, n_images, batch)):
        maps, masks = (t[: n_images - start].clone() for t in pool[step % len(pool)])
        t0, c0 = time.perf_counter(), time.process_time()
        pixel.update(maps, masks)
        image.update(maps.flatten(1).amax(1), masks.flatten(1).any(1))
        wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    pixel.compute(), image.compute()
    wall, cpu = wall + time.perf_counter() - t0, cpu + time.process_time() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    with contextlib.suppress(OSError):  # hand freed heap back to the OS: what stays is what is really held
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {"wall": wall, "cpu": cpu, "peak_mib": peak, "live_mib": rss_mib() - base}


def isolated(mmap_threshold: int | None, *args) -> dict[str, float]:
    """run_cost in a fresh process (clean peak RSS and heap), optionally with glibc's mmap threshold fixed."""
    env = dict(os.environ)
    if mmap_threshold is not None:
        os.environ["MALLOC_MMAP_THRESHOLD_"] = str(mmap_threshold)  # read by glibc at process start
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(run_cost, args)
    finally:
        os.environ.clear()
        os.environ.update(env)


def reference(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> dict[str, float]:
    """Exact pixel AUROC and AUPRO by one global sort, as the MVTec AD evaluation code computes PRO."""
    structure = np.ones((3, 3), dtype=int)  # 8-connectivity
    weight = np.zeros(maps.shape)
    n_regions = 0
    for i, mask in enumerate(masks):
        lab, n = ndimage.label(mask, structure)
        sizes = np.bincount(lab.ravel())
        weight[i][lab > 0] = 1.0 / sizes[lab[lab > 0]]
        n_regions += n
    scores = maps.ravel().astype(np.float64)
    order = np.argsort(-scores, kind="stable")
    scores, anomalous, weight = scores[order], masks.ravel()[order], weight.ravel()[order]
    last = np.append(scores[1:] != scores[:-1], True)  # one point per distinct score (ties merged)
    fpr = np.append(0, np.cumsum(~anomalous)[last] / np.sum(~anomalous))
    tpr = np.append(0, np.cumsum(anomalous)[last] / np.sum(anomalous))
    pro = np.append(0, np.cumsum(weight)[last] / n_regions)
    end = np.searchsorted(fpr, max_fpr, side="right")
    x = np.append(fpr[:end], max_fpr)
    y = np.append(pro[:end], np.interp(max_fpr, fpr[end - 1 : end + 1], pro[end - 1 : end + 1]))
    return {
        "pixel_auroc": float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)),
        "pixel_aupro": float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2) / max_fpr),
    }


def run_error(n_images: int, size: int, seed: int = 1) -> list[tuple[str, float, float, float, float]]:
    """Binned vs exact on a subset: (metric, binned, exact mode, sort reference, bound) rows."""
    gen = torch.Generator().manual_seed(seed)
    batches = [make_batch(min(32, n_images - i), size, gen) for i in range(0, n_images, 32)]
    maps, masks = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    binned, exact = PixelMetrics(), PixelMetrics(num_bins=None)
    for metric in (binned, exact):
        for batch_maps, batch_masks in batches:
            metric.update(batch_maps, batch_masks)
    out_binned, out_exact = binned.compute(), exact.compute()
    ref = reference(maps.numpy(), masks.numpy())
    bound = binned.binning_error_bound
    return [
        (k, out_binned[k].item(), out_exact[k].item(), ref.get(k, np.nan), bound.get(k)) for k in out_binned
    ]


def main() -> None:
    """Print the cost table and the binning-error table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=1725)  # the MVTec AD test set
    parser.add_argument("--error-images", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(2)
    threads, cpus = torch.get_num_threads(), os.cpu_count()
    print(f"torch {torch.__version__}, {threads} threads, {cpus} CPUs, PixelMetrics() (2**20 bins)")
    print(f"load average before: {os.getloadavg()[0]:.1f} (other jobs on the machine inflate wall times)\n")
    columns = ["maps", "batch", "glibc malloc", "metric wall (s)", "metric CPU (s)", "peak extra RSS (MiB)"]
    print("| " + " | ".join([*columns, "after malloc_trim (MiB)"]) + " |")
    print("|---|---|---|---|---|---|---|")
    for n, size, batch in ((args.images, 256, 32), (64, 1024, 8)):
        for threshold in (None, 2**20):
            r = isolated(threshold, n, size, batch)
            malloc = "default" if threshold is None else "MALLOC_MMAP_THRESHOLD_=1MiB"
            cells = f"{r['wall']:.1f} | {r['cpu']:.1f} | {r['peak_mib']:.0f} | {r['live_mib']:.0f}"
            print(f"| {n} x {size}^2 | {batch} | {malloc} | {cells} |")
    print("\nBinned vs exact (exact: PixelMetrics(num_bins=None) and an independent numpy sort):\n")
    print("| maps | metric | binned (2**20) | exact mode | numpy sort | abs(binned - exact) | bound |")
    print("|---|---|---|---|---|---|---|")
    for n, size in ((args.error_images, 256), (8, 1024)):
        for key, b, e, r, bound in run_error(n, size):
            bound_text = "" if bound is None else f"{bound:.1e}"
            cells = f"{b:.6f} | {e:.6f} | {r:.6f} | {abs(b - e):.1e} | {bound_text}"
            print(f"| {n} x {size}^2 | {key} | {cells} |")
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

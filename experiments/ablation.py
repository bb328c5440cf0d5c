"""Does the structured corruption beat plain and Gaussian-denoising autoencoders? Ablation at a fixed budget.

Run: PYTHONPATH=. python experiments/ablation.py            (all variants, textures + elpv, 3 seeds)
     PYTHONPATH=. python experiments/ablation.py --datasets textures,elpv:mono --seeds 0

Every run is an ordinary `anomaly_ae.cli.train.fit(cfg)` on the real config (Hydra's compose API),
with the variant's overrides on top of a shared CPU budget: `--steps` optimiser steps (trainer.max_steps),
batch 16, `--image-size` px, a quarter-width model (width 16, max_width 128) and, at 64 px, depth 3 so the
code keeps 8x8 positions. Each finished run is appended to `<csv>_runs.csv` and skipped when the script is
run again, so seeds can be added later. The table (mean ± std over seeds) goes to stdout as Markdown and to
`--csv`; per-run logs go to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import statistics
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

from anomaly_ae.cli.common import CONF_DIR

METRICS = ("image_auroc", "pixel_auroc", "pixel_aupro")

# The ablation compares what the autoencoder is trained on, so every variant scores with the formula residual
# that a plain autoencoder can use too (the default's learned component needs corruption masks to learn from).
FORMULA_SCORE = ["score.residual=squared_and_gradient"]
# Each variant changes one thing against the paper's objective (a), except the two baselines.
VARIANTS: dict[str, list[str]] = {
    "plain_ae": ["corruption=none", "model.skips=false", "model.bottleneck_channels=8"],  # capacity only
    "gaussian_dae": ["corruption=gaussian"],  # same network as (a), i.i.d. noise instead of regions
    "paper_a": ["corruption=paper"],  # foreign content, blind filtering
    "paper_b": ["corruption=blank"],  # classic inpainting: blanked regions
    "paper_a_anchor": ["corruption=paper", "corruption.gaussian_noise_std=0.02"],  # follow-up's noise
    "no_skips": ["corruption=paper", "model.skips=false"],
    "rectangles_only": ["corruption=paper", "corruption.shapes=[rectangle]"],
    "batch_fill_only": ["corruption=paper", "corruption.sources=[batch]"],
}
DATASETS = {
    "textures": ("brick", "grass", "gravel"),
    "materials": ("felt", "parquet", "plaster", "wall"),  # needs `pip install --no-deps robosuite==1.5.2`
    "elpv": ("mono", "poly"),
}
RUN_COLUMNS = ("variant", "data", "category", "seed", "steps", "image_size", *METRICS, "fit_seconds")


def budget_overrides(steps: int, image_size: int) -> list[str]:
    """The shared budget: same steps, size, model width, schedule and scoring scale for every variant."""
    depth = 3 if image_size <= 64 else 4  # >= 8x8 code positions; dilation 8 would reach past a 4x4 code
    return [
        "trainer=cpu",
        "logger=none",
        f"++trainer.max_steps={steps}",  # ++: not in conf/trainer/default.yaml (Lightning default -1)
        "trainer.max_epochs=-1",  # the step count is the budget
        "trainer.check_val_every_n_epoch=2",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        f"data.image_size={image_size}",
        "data.batch_size=16",
        "model.width=16",  # a quarter of the default FLOPs, as experiment=elpv_demo
        "model.max_width=128",
        f"model.depth={depth}",
        f"model.dilations={[1, 2, 4, 8][:depth]}".replace(" ", ""),
        "optim.lr=2.0e-3",  # few steps: the larger step size of experiment=elpv_demo
        f"score.sigma={4 * image_size / 256:g}",  # the method's 4 px at 256 px, scaled
    ]


def parse_datasets(spec: str) -> list[tuple[str, str]]:
    """ "textures,elpv:mono" -> [(textures, brick), (textures, grass), (textures, gravel), (elpv, mono)]."""
    pairs = []
    for item in spec.split(","):
        data, _, category = item.partition(":")
        if not category and data not in DATASETS:
            raise ValueError(f"--datasets {item!r}: give data:category, or one of {sorted(DATASETS)}")
        pairs += [(data, c) for c in ([category] if category else DATASETS[data])]
    return pairs


def fit_run(overrides: list[str]) -> tuple[dict[str, float], float]:
    """Compose the real config with `overrides`, train and test; return (test metrics, wall seconds)."""
    from anomaly_ae.cli.train import fit

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    start = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # run summaries to stderr: stdout holds only the table
        metrics = fit(cfg)
    return metrics, time.perf_counter() - start


def run_one(variant: str, data: str, category: str, seed: int, args: argparse.Namespace) -> dict:
    """Train and test one variant on one category; return its row of RUN_COLUMNS."""
    output_dir = Path(args.output_dir) / f"{variant}_{data}_{category}_seed{seed}"
    overrides = [f"data={data}", f"category={category}", f"seed={seed}", f"output_dir={output_dir}"]
    overrides += (
        budget_overrides(args.steps, args.image_size) + FORMULA_SCORE + VARIANTS[variant] + args.override
    )
    metrics, seconds = fit_run(overrides)
    row = {"variant": variant, "data": data, "category": category, "seed": seed, "steps": args.steps,
           "image_size": args.image_size, "fit_seconds": round(seconds, 1)}  # fmt: skip
    for name in METRICS:
        row[name] = metrics.get(f"test/{name}", float("nan"))  # no masks (elpv): no pixel metrics
    return row


def read_runs(path: Path) -> list[dict]:
    """The finished runs; a run repeated by parallel invocations counts once (the last one)."""
    if not path.exists():
        return []
    with path.open() as file:
        rows = list(csv.DictReader(file))
    key = ("variant", "data", "category", "seed", "steps", "image_size")
    return list({tuple(r[k] for k in key): r for r in rows}.values())


def summarise(
    runs: list[dict], variants: list[str], pairs: list[tuple[str, str]], metrics: tuple[str, ...] = METRICS
) -> list[dict]:
    """Per variant: one row per category (mean ± std over its seeds), then, for data with several
    categories, a `data:mean` row: the category mean per seed, mean ± std over the seeds run on all of them.
    """
    table = []
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        for data, category in pairs:
            picked = [r for r in mine if (r["data"], r["category"]) == (data, category)]
            if picked:  # else: not run (yet) at this budget
                values = [[_metric(r, m) for r in picked] for m in metrics]
                table.append(_row(variant, f"{data}:{category}", values, metrics))
        for data in dict.fromkeys(d for d, _ in pairs):
            categories = [c for d, c in pairs if d == data]
            by_seed = {
                seed: [r for r in mine if r["data"] == data and r["seed"] == seed]
                for seed in {r["seed"] for r in mine}
            }
            complete = [rows for rows in by_seed.values() if {r["category"] for r in rows} >= set(categories)]
            if len(categories) > 1 and complete:
                per_seed = [
                    [
                        statistics.mean(_metric(r, m) for r in rows if r["category"] in categories)
                        for rows in complete
                    ]
                    for m in metrics
                ]
                table.append(_row(variant, f"{data}:mean", per_seed, metrics))
    return table


def _metric(run: dict, name: str) -> float:
    return float(run[name]) if run.get(name, "") != "" else float("nan")  # no masks (elpv): nan


def _row(variant: str, data: str, values: list[list[float]], metrics: tuple[str, ...] = METRICS) -> dict:
    """values[i]: metric i over the seeds."""
    row = {"variant": variant, "data": data, "seeds": len(values[0])}
    for name, seeds in zip(metrics, values, strict=True):
        if any(math.isnan(v) for v in seeds):  # metric not available (no masks)
            row[name] = row[f"{name}_std"] = float("nan")
            continue
        row[name] = statistics.mean(seeds)
        row[f"{name}_std"] = statistics.stdev(seeds) if len(seeds) > 1 else 0.0
    return row


def markdown(table: list[dict]) -> str:
    def cell(row: dict, name: str) -> str:
        if row[name] != row[name]:  # NaN: the data has no masks
            return "n/a"
        return f"{row[name]:.3f} ± {row[f'{name}_std']:.3f}" if row["seeds"] > 1 else f"{row[name]:.3f}"

    lines = ["| variant | data | seeds | image AUROC | pixel AUROC | AUPRO |", "|---|---|---|---|---|---|"]
    lines += [
        f"| {r['variant']} | {r['data']} | {r['seeds']} | " + " | ".join(cell(r, m) for m in METRICS) + " |"
        for r in table
    ]
    return "\n".join(lines)


def append_row(path: Path, row: dict, columns: tuple[str, ...] = RUN_COLUMNS) -> None:
    """Append one run, so that parallel invocations sharing the file never overwrite each other's runs."""
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerow(row)


def write_rows(path: Path, rows: list[dict], columns: list[str] | tuple[str, ...]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)


def run_missing(args, variants: list[str], pairs, seeds: list[int], run_one, columns) -> list[dict]:
    """This budget's finished runs, after running the missing ones: `run_one(variant, data, category, seed,
    args)` returns a row of `columns`, appended to `<args.csv>_runs.csv` as soon as it is done.

    Every budget ever run is kept in the file; the table uses this budget's seeds. Seed-major, so that a
    cut-short invocation still covers every variant once; nothing runs with args.table_only.
    """
    table_path = Path(args.csv)
    runs_path = table_path.with_name(f"{table_path.stem}_runs.csv")
    budget = {"steps": str(args.steps), "image_size": str(args.image_size)}
    runs = [
        r
        for r in read_runs(runs_path)
        if all(r[k] == v for k, v in budget.items()) and int(r["seed"]) in seeds
    ]
    done = {(r["variant"], r["data"], r["category"], r["seed"]) for r in runs}
    for seed in seeds:
        for data, category in pairs:
            for variant in variants:
                if args.table_only or (variant, data, category, str(seed)) in done:
                    continue
                row = run_one(variant, data, category, seed, args)
                print(f"done {variant} {data}:{category} seed {seed}: {row}", file=sys.stderr, flush=True)
                runs.append({k: str(v) for k, v in row.items()})
                append_row(runs_path, runs[-1], columns)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--datasets", default="textures,elpv", help="comma-separated data or data:category")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=250, help="optimiser steps per run (batch 16)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--csv", default="experiments/ablation.csv", help="the table; runs go to *_runs.csv")
    parser.add_argument("--output-dir", default="outputs/ablation", help="run directories (checkpoints)")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override for every run")
    parser.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    pairs, seeds = parse_datasets(args.datasets), [int(s) for s in args.seeds.split(",")]

    runs = run_missing(args, variants, pairs, seeds, run_one, RUN_COLUMNS)
    table_path = Path(args.csv)
    table = summarise(runs, variants, pairs)
    if not table:
        sys.exit(f"no finished runs at this budget in {table_path.with_name(table_path.stem + '_runs.csv')}")
    write_rows(table_path, table, list(table[0]))
    print(
        f"{args.steps} steps of batch 16 at {args.image_size} px per run; seeds {args.seeds} (as far as run)"
    )
    print(markdown(table))


if __name__ == "__main__":
    main()

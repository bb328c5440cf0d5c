"""Leak-free quality suite: every variant on every texture category and ELPV, per defect family.

Run: PYTHONPATH=. python experiments/quality.py --seeds 0                     (all variants, all data)
     PYTHONPATH=. python experiments/quality.py --variants defaults,elpv_arch --datasets textures:brick
     PYTHONPATH=. python experiments/quality.py --table-only                  (tabulate what has run)
     PYTHONPATH=. python experiments/quality.py --quick ...                   (2 steps at 32 px: tested)

Built on `experiments/ablation.py` (imported, not copied): each run is `anomaly_ae.cli.train.fit` on the real
config with a variant's Hydra overrides on top of the same CPU budget (`--steps` steps of batch 16 at
`--image-size` px, width 16). Per run it keeps image AUROC, pixel AUROC and AUPRO from metrics.json, the
image AUROC of every test defect family against the good test images (from the run's scores.csv: one
`test/<family>/` folder per family in `data=textures`, see `anomaly_ae.data.defects`), the training
throughput (optimiser steps x batch / training wall time, validation included) and the test time. Runs are
appended to `<csv>_runs.csv` and skipped when the script runs again, so seeds can be added later. Stdout:
one Markdown table (mean ± std over seeds), then the leave-one-family-out check: a variant whose training
corruption lacks what most resembles a test family, against the variant with it, on that family.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np

_spec = importlib.util.spec_from_file_location("ablation", Path(__file__).with_name("ablation.py"))
ablation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablation)

# The families of anomaly_ae.data.defects (not imported: that would import torch before argument parsing).
FAMILIES = ("scratch", "stain", "crack", "hole", "smudge", "misoriented", "particles")
METRICS = ablation.METRICS + tuple(f"family_{f}" for f in FAMILIES) + ("train_images_per_s", "test_seconds")
RUN_COLUMNS = ("variant", "data", "category", "seed", "steps", "image_size", *METRICS, "train_seconds",
               "fit_seconds", "run_dir")  # fmt: skip
ELPV_ARCH = ["model=conv_ae_bottleneck"]  # the architecture of experiment=elpv_demo: no skips, sigmoid, 3x3
ELPV_LAYERS = [*ELPV_ARCH, "model.skips=true"]  # its layers with the default's gated skips

VARIANTS: dict[str, list[str]] = {
    "defaults": [],  # conf/ as it is: gated skips, linear output, 4x4 downsampling, corruption=families,
    # score.residual=squared_gradient_and_learned (corruption=paper until 2026-12-02, score.residual=
    # squared_and_gradient until 2026-12-05: the `defaults` rows of the runs files up to then used those)
    "paper": ["corruption=paper"],  # the default architecture with the paper's corruption alone
    "elpv_arch": ELPV_ARCH,  # the architecture of experiment=elpv_demo
    "plain_ae": ["corruption=none", "model.skips=false", "model.bottleneck_channels=8",
                 "score.residual=squared_and_gradient"],  # baseline: no masks, so the formula residual
    # Gated skips only at the coarser resolutions: texture guidance without a path for 1-px cracks.
    "skips_from_4": ["model.skip_min_stride=4"],
    "skips_from_8": ["model.skip_min_stride=8"],
    # skips_from_8 with corruption=families, the default since 2026-12-02 (skips_from_8 ran with paper).
    "families_skips_from_8": ["corruption=families", "model.skip_min_stride=8"],
    "elpv_arch_skips": ELPV_LAYERS,  # the elpv_demo architecture with the default's gated skips
    "elpv_arch_skips_from_8": [*ELPV_LAYERS, "model.skip_min_stride=8"],
    "families": ["corruption=families"],  # the default architecture + strokes, plasma, photometric, missing
                                          # (the default since 2026-12-02: the same runs as `defaults`)
    "elpv_arch_families": [*ELPV_ARCH, "corruption=families"],  # + strokes, plasma, photometric, missing
    # Skips whose mix also depends on the pixel (model.skip_gate=spatial): the default's skips, and the
    # elpv_demo layers with them.
    "spatial_gates": ["model.skip_gate=spatial"],
    "elpv_arch_spatial_gates": [*ELPV_LAYERS, "model.skip_gate=spatial"],
    # The default, half of whose training images pass the decoder with every skip closed.
    "skip_dropout": ["model.skip_dropout=0.5"],
    # + the multi-scale gradient-magnitude loss term: RIAD's weight 1, and a tenth of it.
    "gradient_loss": ["loss.gradient_weight=1.0"],
    "gradient_loss_01": ["loss.gradient_weight=0.1"],
    # Leave one family out (each against the variant with it, on the test family it most resembles):
    "elpv_arch_no_self": [*ELPV_ARCH, "corruption.sources=[batch,texture]"],
    "families_no_stroke": [*ELPV_ARCH, "corruption=families",
                           "corruption.shapes=[rectangle,ellipse,polygon,blob,plasma]"],
    "families_no_missing": [*ELPV_ARCH, "corruption=families",
                            "corruption.sources=[batch,self,texture,photometric]"],
    "families_no_photometric": [*ELPV_ARCH, "corruption=families",
                                "corruption.sources=[batch,self,texture,missing]"],
    # + a segmenter trained on the corruption masks, its logits a third z-scored residual component.
    "learned": ["score.residual=squared_gradient_and_learned"],
    # The default with the formula residual: the default from 2026-12-02 to 12-05, whose `defaults` rows are
    # in quality_600_ssim_runs.csv and quality_600_materials_runs.csv.
    "formula": ["score.residual=squared_and_gradient"],
    "learned_w16": ["score.residual=squared_gradient_and_learned", "score.segmenter_width=16"],
    "learned_w4": ["score.residual=squared_gradient_and_learned", "score.segmenter_width=4"],
    # A fourth max-pool stage: 16x coarser context, so that a patch can be compared with more of its surround.
    "learned_depth4": ["score.residual=squared_gradient_and_learned", "score.segmenter_depth=4"],
    # + half of the pasted regions at full opacity and without jitter: no blend or tone edge to find them by.
    "learned_opaque": ["score.residual=squared_gradient_and_learned", "corruption.opaque_fraction=0.5"],
    # The elpv_demo architecture with the default's corruption and learned residual: its segmenter may read
    # past the grain a bottleneck cannot reproduce (its formula residual stayed high on stochastic textures).
    "bottleneck_learned": [*ELPV_ARCH, "corruption=families", "score.residual=squared_gradient_and_learned"],
    # The default with skips from H/8 only: the bottleneck_learned rows showed that fewer skips help oriented
    # and smooth surfaces (and mono) and hurt grainy ones; coarse skips keep some grain guidance.
    "learned_skips_from_8": ["score.residual=squared_gradient_and_learned", "model.skip_min_stride=8"],
    # The default with skip dropout: half of the training images pass the decoder with every skip closed,
    # so it must also reconstruct from the bottleneck (mono +0.03 with the formula residual, grass and
    # gravel lower); the segmenter may keep the localisation that the formula residual lost there.
    "learned_skip_dropout": ["score.residual=squared_gradient_and_learned", "model.skip_dropout=0.5"],
    # The lr of conf/config.yaml (2e-4) instead of the budget's 2e-3 of experiment=cpu.
    "defaults_lr_2e-4": ["optim.lr=2.0e-4"],
    "elpv_arch_families_lr_2e-4": [*ELPV_ARCH, "corruption=families", "optim.lr=2.0e-4"],
}  # fmt: skip
# variant without -> (variant with, the test family that most resembles what was left out)
LEAVE_ONE_OUT: dict[str, tuple[str, str]] = {
    "elpv_arch_no_self": ("elpv_arch", "misoriented"),  # rotated/rescaled self-copies
    "families_no_stroke": ("elpv_arch_families", "scratch"),  # thin curved strokes
    "families_no_missing": ("elpv_arch_families", "hole"),  # flat dark/bright fills
    "families_no_photometric": ("elpv_arch_families", "stain"),  # local brightness/contrast changes
}
DEFAULT_VARIANTS = "defaults,elpv_arch,plain_ae,elpv_arch_families"
QUICK = ["model.width=8", "model.depth=2", "model.dilations=[1]", "data.eval_batch_size=8"]


def image_auroc(scores: list[float], labels: list[int]) -> float:
    """Exact AUROC (Mann-Whitney, ties count half); nan if a class is missing."""
    scores, labels = np.asarray(scores, float), np.asarray(labels, bool)
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def family_aurocs(scores_csv: Path) -> dict[str, float]:
    """Image AUROC of each defect family's images against the good test images, from a run's scores.csv."""
    with scores_csv.open() as file:
        rows = list(csv.DictReader(file))
    good = [float(r["score"]) for r in rows if r["label"] == "0"]
    result = {}
    for family in dict.fromkeys(r["defect_type"] for r in rows if r["label"] == "1"):
        bad = [float(r["score"]) for r in rows if r["label"] == "1" and r["defect_type"] == family]
        result[family] = image_auroc(good + bad, [0] * len(good) + [1] * len(bad))
    return result


def run_one(variant: str, data: str, category: str, seed: int, args: argparse.Namespace) -> dict:
    """Train and test one variant on one category; return its row of RUN_COLUMNS."""
    run_dir = Path(args.output_dir) / f"{variant}_{data}_{category}_seed{seed}_{args.steps}x{args.image_size}"
    overrides = [f"data={data}", f"category={category}", f"seed={seed}", f"output_dir={run_dir}"]
    overrides += ablation.budget_overrides(args.steps, args.image_size) + (QUICK if args.quick else [])
    metrics, seconds = ablation.fit_run(overrides + VARIANTS[variant] + args.override)
    report = json.loads((run_dir / "metrics.json").read_text())
    batch = 16  # ablation.budget_overrides: data.batch_size=16
    row = {"variant": variant, "data": data, "category": category, "seed": seed, "steps": args.steps,
           "image_size": args.image_size, "train_seconds": report["train_seconds"],
           "test_seconds": report["test_seconds"], "fit_seconds": round(seconds, 1),
           "train_images_per_s": round(report["steps"] * batch / max(report["train_seconds"], 1e-9), 2),
           "run_dir": str(run_dir)}  # fmt: skip
    for name in ablation.METRICS:
        row[name] = metrics.get(f"test/{name}", float("nan"))  # no masks (elpv): no pixel metrics
    families = family_aurocs(run_dir / "scores.csv")
    for family in FAMILIES:
        row[f"family_{family}"] = families.get(family, float("nan"))
    return row


def markdown(table: list[dict]) -> str:
    """Main metrics as mean ± std; families and speed as means (their std is in the CSV)."""

    def cell(row: dict, name: str, spread: bool = True, digits: int = 3) -> str:
        if math.isnan(row[name]):
            return "n/a"
        if spread and row["seeds"] > 1:
            return f"{row[name]:.{digits}f} ± {row[f'{name}_std']:.{digits}f}"
        return f"{row[name]:.{digits}f}"

    head = [
        "variant",
        "data",
        "seeds",
        "image AUROC",
        "pixel AUROC",
        "AUPRO",
        *FAMILIES,
        "train img/s",
        "test s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table:
        cells = [r["variant"], r["data"], str(r["seeds"])]
        cells += [cell(r, m) for m in ablation.METRICS]
        cells += [cell(r, f"family_{f}", spread=False, digits=2) for f in FAMILIES]
        cells += [cell(r, "train_images_per_s", spread=False, digits=1), cell(r, "test_seconds", False, 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def leave_one_out(table: list[dict]) -> str:
    """Per left-out family: the resembling test family's image AUROC with and without it, per data row."""
    by_key = {(r["variant"], r["data"]): r for r in table}
    lines = [
        "| left out (variant) | test family | data | with | without | change |",
        "|---|---|---|---|---|---|",
    ]
    for without, (with_, family) in LEAVE_ONE_OUT.items():
        for (variant, data), row in by_key.items():
            base = by_key.get((with_, data))
            key = f"family_{family}"
            if variant != without or base is None or math.isnan(row[key]) or math.isnan(base[key]):
                continue
            lines.append(f"| {without} (vs {with_}) | {family} | {data} | {base[key]:.3f} | {row[key]:.3f} | "
                         f"{row[key] - base[key]:+.3f} |")  # fmt: skip
    return "\n".join(lines) if len(lines) > 2 else ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default=DEFAULT_VARIANTS, help=f"comma-separated: {', '.join(VARIANTS)}"
    )
    parser.add_argument("--datasets", default="textures,elpv", help="comma-separated data or data:category")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per run (batch 16)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="2 steps at 32 px, tiny model: a smoke test")
    parser.add_argument("--csv", default="experiments/quality.csv", help="the table; runs go to *_runs.csv")
    parser.add_argument("--output-dir", default="outputs/quality", help="run directories (checkpoints)")
    parser.add_argument("--override", action="append", default=[], help="extra Hydra override for every run")
    parser.add_argument("--table-only", action="store_true", help="tabulate the finished runs, train nothing")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.image_size = 2, 32
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    pairs, seeds = ablation.parse_datasets(args.datasets), [int(s) for s in args.seeds.split(",")]

    runs = ablation.run_missing(args, variants, pairs, seeds, run_one, RUN_COLUMNS)
    table_path = Path(args.csv)
    table = ablation.summarise(runs, variants, pairs, METRICS)
    if not table:
        sys.exit(f"no finished runs at this budget in {table_path.with_name(table_path.stem + '_runs.csv')}")
    ablation.write_rows(table_path, table, list(table[0]))
    print(
        f"{args.steps} steps of batch 16 at {args.image_size} px per run; seeds {args.seeds} (as far as run)"
    )
    print(markdown(table))
    check = leave_one_out(table)
    if check:
        print("\nLeave one family out (image AUROC of the resembling test family against the good images):\n")
        print(check)


if __name__ == "__main__":
    main()

"""Score options on trained checkpoints: every `score.*` variant of the same weights, side by side.

Run: PYTHONPATH=. python experiments/rescore.py <run dir> [<run dir> ...]
     PYTHONPATH=. python experiments/rescore.py outputs/quality/defaults_*_600x128 --seeds-table

The score options (residual, normalisation, flip averaging, the reduction) do not change training, so they are
compared on the weights a run selected (its checkpoints/best.ckpt) instead of training again. Leak-free:
per-pixel statistics come from the clean validation images of the run's own split (its config.yaml),
never from test images. Per run and variant: image and pixel AUROC on the run's validation pseudo-defects
(what a leak-free choice of the score could see; "as trained" reproduces the checkpoint's monitored value),
image AUROC, pixel AUROC and AUPRO of the test split, and the image AUROC of each defect family against the
good test images. Markdown on stdout; --seeds-table adds the mean ± std over the seeds of each run name (the
runs of experiments/quality.py differ only in `_seed<n>`).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf

from anomaly_ae.data.images import as_float
from anomaly_ae.evaluation.metrics import ImageMetrics, PixelMetrics
from anomaly_ae.inference.loading import load_module
from anomaly_ae.model.scorer import AnomalyScorer
from anomaly_ae.model.scoring import residual_sums, uses_segmenter
from anomaly_ae.training.module import VAL_CORRUPTION_SEED

SQUARED_AND_GRADIENT = {"residual": "squared_and_gradient", "normalize": "pixel"}  # the default residual
VARIANTS = {  # score options on top of the run's own
    "as trained": {},
    "residual=squared": {"residual": "squared"},
    "squared+normalize=none": {"residual": "squared", "normalize": "none"},
    "normalize=pixel": {"normalize": "pixel"},
    "flip_average": {"flip_average": True},
    "normalize=pixel + flip_average": {"normalize": "pixel", "flip_average": True},
    "reduction=topk_mean": {"reduction": "topk_mean"},
    "residual=multiscale": {"residual": "multiscale"},
    "residual=gradient": {"residual": "gradient"},
    "residual=squared_and_gradient": SQUARED_AND_GRADIENT,
    "squared_and_gradient+topk_mean": {**SQUARED_AND_GRADIENT, "reduction": "topk_mean"},
    "squared_and_gradient+sigma=1": {**SQUARED_AND_GRADIENT, "sigma": 1.0},
    "squared_and_gradient+sigma=4": {**SQUARED_AND_GRADIENT, "sigma": 4.0},
    "topk=25": {"reduction": "topk_mean", "topk": 25},
    "topk=400": {"reduction": "topk_mean", "topk": 400},
    "residual=ssim": {"residual": "ssim", "normalize": "pixel"},
    "residual=squared_and_ssim": {"residual": "squared_and_ssim", "normalize": "pixel"},
    "residual=squared_gradient_and_ssim": {"residual": "squared_gradient_and_ssim", "normalize": "pixel"},
    # Runs that trained a segmenter (score.residual=squared_gradient_and_learned) only:
    "learned": {"residual": "learned", "normalize": "pixel"},
    "squared_gradient_and_learned": {"residual": "squared_gradient_and_learned", "normalize": "pixel"},
}


class TestOutputs(NamedTuple):
    """A scorer's outputs on a run's test split, in loader order: maps at the model input size."""

    maps: torch.Tensor  # (N, S, S)
    scores: torch.Tensor  # (N,)
    labels: torch.Tensor  # (N,)
    families: list[str]
    masks: list[torch.Tensor] | None  # (H, W) each, at the ground-truth size; None without masks


@torch.no_grad()
def rescore(run_dir: Path, variants: dict[str, dict]) -> list[dict]:
    module, datamodule = load_run(run_dir)
    rows = []
    for name, options in variants.items():
        if uses_segmenter(options.get("residual", "squared")) and module.scorer.segmenter is None:
            print(f"{run_dir.name} / {name}: skipped, the run trained no segmenter", file=sys.stderr)
            continue
        scorer = fitted_scorer(module, datamodule, options)
        row = {"run": run_dir.name, "score": name, **validation_metrics(module, scorer, datamodule)}
        row |= test_metrics(test_outputs(scorer, datamodule), module.hparams.eval["max_fpr"])
        rows.append(row)
        print(f"{run_dir.name} / {name}: image AUROC {row['image_auroc']:.3f}", file=sys.stderr)
    return rows


def load_run(run_dir: Path):
    """The run's selected weights (checkpoints/best.ckpt) and its own data split, set up for testing."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    module = load_module(run_dir / "checkpoints" / "best.ckpt")
    datamodule = instantiate(cfg.data, progress=False)
    datamodule.setup("test")
    return module, datamodule


@torch.no_grad()
def fitted_scorer(module, datamodule, options: dict) -> AnomalyScorer:
    """The run's scorer with `options` on top; per-pixel statistics from its clean validation images only."""
    score = {**module.hparams.score, **options}
    scorer = AnomalyScorer.from_config(module.autoencoder, score, module.hparams.image_size).eval()
    if scorer.segmenter is not None:  # a learned residual: the run's trained segmenter, not a fresh one
        if module.scorer.segmenter is None:
            raise ValueError(f"{options}: this run trained no segmenter (its score.residual is a formula)")
        scorer.segmenter = module.scorer.segmenter
    if score.get("normalize", "none") != "none":
        batches = datamodule.val_dataloader()
        sums = sum(residual_sums(scorer.residual(as_float(b["image"]))) for b in batches)
        scorer.fit_normalization(sums[1], sums[2], float(sums[0].flatten()[0]))
    return scorer


@torch.no_grad()
def test_outputs(scorer: AnomalyScorer, datamodule) -> TestOutputs:
    maps, scores, labels, families, masks = [], [], [], [], []
    for batch in datamodule.test_dataloader():
        batch_maps, batch_scores = scorer(as_float(batch["image"]))
        maps.append(batch_maps)
        scores.append(batch_scores)
        labels.append(batch["label"].long())
        families += list(batch["defect_type"])
        if datamodule.has_masks:
            masks += list(batch["mask"][:, 0])
    return TestOutputs(
        torch.cat(maps), torch.cat(scores), torch.cat(labels), families, masks if masks else None
    )


def test_metrics(outputs: TestOutputs, max_fpr: float) -> dict[str, float]:
    """Image metrics, pixel metrics (maps upsampled bilinearly to the mask size), image AUROC per family."""
    image = ImageMetrics()
    image.update(outputs.scores, outputs.labels)
    row = {k: float(v) for k, v in image.compute().items()}
    if outputs.masks is not None:
        pixel = PixelMetrics(max_fpr)
        for one_map, mask in zip(outputs.maps, outputs.masks, strict=True):
            if mask.shape != one_map.shape:
                one_map = F.interpolate(one_map[None, None], size=mask.shape, mode="bilinear")[0, 0]
            pixel.update(one_map[None], mask[None])
        row |= {k: float(v) for k, v in pixel.compute().items()}
    labels = outputs.labels.tolist()
    for family in sorted({f for f, label in zip(outputs.families, labels, strict=True) if label}):
        keep = [i for i, (f, label) in enumerate(zip(outputs.families, labels, strict=True))
                if not label or f == family]  # fmt: skip
        family_metric = ImageMetrics()
        family_metric.update(outputs.scores[keep], outputs.labels[keep])
        row[f"family_{family}"] = float(family_metric.compute()["image_auroc"])
    return row


def validation_metrics(module, scorer: AnomalyScorer, datamodule) -> dict[str, float]:
    """Image and pixel AUROC of `scorer` on the run's validation pseudo-defects (never test data), drawn as
    the run's own validation draws them: its val_corruption with its fixed seed, each clean image once."""
    generator = torch.Generator().manual_seed(VAL_CORRUPTION_SEED)
    image, pixel = ImageMetrics(), PixelMetrics(module.hparams.eval["max_fpr"])
    for batch in datamodule.val_dataloader():
        corrupted, masks = module.val_corruption(as_float(batch["image"]), generator)
        maps = scorer.anomaly_map(corrupted)
        image.update(scorer.image_score(maps), masks[:, 0].flatten(1).any(dim=1).long())
        pixel.update(maps, masks[:, 0])
    return {"val_image_auroc": float(image.compute()["image_auroc"]),
            "val_pixel_auroc": float(pixel.compute()["pixel_auroc"])}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    families = sorted({k for row in rows for k in row if k.startswith("family_")})
    validation = [c for c in ("val_image_auroc", "val_pixel_auroc") if any(c in row for row in rows)]
    columns = [*validation, "image_auroc", "pixel_auroc", "pixel_aupro", *families]
    lines = ["| run | score | " + " | ".join(c.removeprefix("family_") for c in columns) + " |"]
    lines.append("|---|---|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{row[c]:.3f}" if c in row else "n/a" for c in columns]
        lines.append(f"| {row['run']} | {row['score']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_table(rows: list[dict]) -> str:
    """Main metrics as mean ± std over the seeds of each (run name without `_seed<n>`, score) pair.

    The sample standard deviation (n - 1), as in the tables of quality.py and ablation.py; 0 for one seed.
    """
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((re.sub(r"_seed\d+", "", row["run"]), row["score"]), []).append(row)
    columns = ["image_auroc", "pixel_auroc", "pixel_aupro"]
    lines = ["| runs | score | seeds | " + " | ".join(columns) + " |"]
    lines.append("|---|---|---|" + "---|" * len(columns))
    for (run, score), group in groups.items():
        cells = []
        for column in columns:
            values = [row[column] for row in group if column in row]
            spread = np.std(values, ddof=1) if len(values) > 1 else 0.0
            cells.append(f"{np.mean(values):.3f} ± {spread:.3f}" if values else "n/a")
        lines.append(f"| {run} | {score} | {len(group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (config.yaml, checkpoints/)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {list(VARIANTS)}")
    parser.add_argument("--seeds-table", action="store_true", help="also the mean ± std over seeds")
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    chosen = {name: VARIANTS[name] for name in names}
    rows = [row for run in args.runs for row in rescore(run, chosen)]
    print(markdown(rows))
    if args.seeds_table:
        print("\n" + seeds_table(rows))


if __name__ == "__main__":
    main()

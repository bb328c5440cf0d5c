"""Two trained runs as one detector: the mean of their per-pixel normalised anomaly maps.

Run: PYTHONPATH=. python experiments/ensemble.py outputs/quality/defaults_*_600x128 \
         --partner defaults:elpv_arch_families --seeds-table

Each run named `<a>_<rest>` is paired with `<b>_<rest>` (same data, category, seed, budget: the same split).
Both maps are z-scores against each run's own clean validation images (score.normalize=pixel, fitted as
in experiments/rescore.py), so their mean needs no weights; the image score is the run's own reduction
(top-k mean) of the mean map. No test image informs anything but the metrics. Per pair: image AUROC,
pixel AUROC, AUPRO and the family AUROCs of a alone, b alone and their mean, as Markdown on stdout.
The question it answers: do two architectures that fail on different data (gated skips on thin cracks of
smooth surfaces, no skips on fine grain) fail less as one?
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location("rescore", Path(__file__).with_name("rescore.py"))
rescore = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rescore)


@torch.no_grad()
def ensemble(run_a: Path, run_b: Path, name_a: str, name_b: str) -> list[dict]:
    """Rows for a alone, b alone and the mean of their maps, tested on a's split (the same as b's)."""
    module_a, datamodule = rescore.load_run(run_a)
    module_b, _ = rescore.load_run(run_b)
    if module_a.hparams.image_size != module_b.hparams.image_size:
        raise ValueError(f"{run_a} and {run_b} score at different sizes: they cannot share one map")
    scorer_a = rescore.fitted_scorer(module_a, datamodule, {})
    scorer_b = rescore.fitted_scorer(module_b, datamodule, {})
    outputs_a = rescore.test_outputs(scorer_a, datamodule)
    outputs_b = rescore.test_outputs(scorer_b, datamodule)
    if outputs_a.labels.tolist() != outputs_b.labels.tolist():
        raise ValueError(f"{run_a} and {run_b} test different images: train them with the same seed")
    maps = (outputs_a.maps + outputs_b.maps) / 2
    mean = outputs_a._replace(maps=maps, scores=scorer_a.image_score(maps))
    rest = run_a.name.removeprefix(name_a + "_")
    max_fpr = module_a.hparams.eval["max_fpr"]
    return [
        {"run": rest, "score": score, **rescore.test_metrics(outputs, max_fpr)}
        for score, outputs in ((name_a, outputs_a), (name_b, outputs_b), ("mean of both", mean))
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of variant a")
    parser.add_argument("--partner", required=True, help="a:b, the variant prefixes of the paired run names")
    parser.add_argument("--seeds-table", action="store_true", help="also the mean ± std over seeds")
    args = parser.parse_args(argv)
    name_a, _, name_b = args.partner.partition(":")
    if not name_a or not name_b:
        parser.error(f"--partner {args.partner!r}: give two variant prefixes as a:b")
    rows = []
    for run_a in args.runs:
        if not run_a.name.startswith(name_a + "_"):
            parser.error(f"{run_a} is not a run of variant {name_a!r}")
        run_b = run_a.with_name(name_b + run_a.name.removeprefix(name_a))
        if not (run_b / "checkpoints" / "best.ckpt").is_file():
            parser.error(f"{run_a} has no partner: {run_b}/checkpoints/best.ckpt does not exist")
        rows += ensemble(run_a, run_b, name_a, name_b)
    print(rescore.markdown(rows))
    if args.seeds_table:
        print("\n" + rescore.seeds_table(rows))


if __name__ == "__main__":
    main()

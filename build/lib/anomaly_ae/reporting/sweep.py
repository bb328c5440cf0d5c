"""Aggregate the runs of a sweep into one table: results.md, results.csv and results.png.

    anomaly-ae report multirun/2026-11-23_10-00-00

Also called by Hydra at the end of every multirun (the `report` callback in conf/config.yaml).
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from rich.console import Console
from rich.table import Table

from anomaly_ae.data.mvtec import OBJECTS, TEXTURES
from anomaly_ae.integrations.loggers import log_sweep_report
from anomaly_ae.reporting.plots import bar_chart
from anomaly_ae.reporting.run_outputs import write_csv

COLUMNS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pixel_aupro": "AUPRO"}


def load_runs(sweep_dir: Path) -> list[dict]:
    """Every metrics.json under the sweep directory."""
    return [json.loads(p.read_text()) for p in sorted(Path(sweep_dir).rglob("metrics.json"))]


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: list[dict]) -> list[dict[str, Any]]:
    """One row per category (mean and std over seeds), then texture, object and overall means."""
    by_category: dict[str, list[dict]] = {}
    for run in runs:
        by_category.setdefault(run["category"], []).append(run)
    rows = []
    for category, group in by_category.items():
        row: dict[str, Any] = {"category": category, "seeds": len(group)}
        for key in COLUMNS:
            row[key], row[f"{key}_std"] = _mean_std(
                [r["metrics"].get(f"test/{key}", math.nan) for r in group]
            )
        rows.append(row)
    rows.sort(key=lambda r: (r["category"] not in TEXTURES, r["category"] not in OBJECTS, r["category"]))
    groups = [("mean textures", TEXTURES), ("mean objects", OBJECTS)]
    categories = {r["category"] for r in rows}
    summary = [(name, members) for name, members in groups if categories & set(members)]
    if len(rows) > 1:
        summary.append(("mean", tuple(categories)))
    for name, members in summary:
        picked = [r for r in rows if r["category"] in members]
        mean = {"category": name, "seeds": ""}
        for key in COLUMNS:
            mean[key], mean[f"{key}_std"] = _mean_std([r[key] for r in picked])[0], math.nan
        rows.append(mean)
    return rows


def _cell(value: float, std: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{100 * value:.1f}" + ("" if math.isnan(std) or std == 0 else f" ± {100 * std:.1f}")


def write_report(sweep_dir: Path, console: Console | None = None) -> Path | None:
    """Write results.md, results.csv and results.png into the sweep dir and print the table."""
    sweep_dir = Path(sweep_dir)
    runs = load_runs(sweep_dir)
    if not runs:
        (console or Console()).print(f"[yellow]no metrics.json under {sweep_dir}: nothing to report")
        return None
    rows = aggregate(runs)
    resolutions = sorted({r["eval_resolution"] for r in runs})
    header = ["category", "seeds", *COLUMNS.values()]
    cells = [
        [str(r["category"]), str(r["seeds"]), *(_cell(r[k], r[f"{k}_std"]) for k in COLUMNS)] for r in rows
    ]
    lines = [
        f"# Results: {sweep_dir.name}",
        "",
        f"{len(runs)} runs; values in %, mean ± std over seeds; evaluated at {', '.join(resolutions)}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in cells),
    ]
    (sweep_dir / "results.md").write_text("\n".join(lines) + "\n")
    write_csv(sweep_dir / "results.csv", rows)
    per_category = [r for r in rows if r["seeds"] != ""]
    bar_chart(
        sweep_dir / "results.png",
        [r["category"] for r in per_category],
        {label: [r[k] for r in per_category] for k, label in COLUMNS.items()},
        {
            label: [0 if math.isnan(r[f"{k}_std"]) else r[f"{k}_std"] for r in per_category]
            for k, label in COLUMNS.items()
        },
    )
    table = Table(title=f"Sweep results ({', '.join(resolutions)})", title_justify="left")
    for name in header:
        table.add_column(name, justify="left" if name == "category" else "right")
    for row in cells:
        table.add_row(*row)
    console = console or Console()
    console.print(table)
    console.print(f"written: {sweep_dir / 'results.md'}, results.csv, results.png")
    return sweep_dir / "results.md"


class ReportCallback(Callback):
    """Hydra callback: aggregate a multirun when its last job has finished."""

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if write_report(sweep_dir) is not None and "wandb" in (config.get("logger") or {}):
            wandb_cfg = config.logger.wandb  # only sweep-wide keys: the others interpolate per-run values
            log_sweep_report(
                {key: wandb_cfg.get(key) for key in ("project", "entity", "group", "mode")}, sweep_dir
            )

"""The terminal: the table at the end of a run; library messages that mean nothing to a user dropped."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterable
from pathlib import Path

from rich.console import Console
from rich.table import Table

from anomaly_ae.integrations.loggers import wandb_run_dir


def format_metric(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def print_summary(report: dict, output_dir: Path, console: Console | None = None) -> None:
    """Print metrics, timing and output paths of one run as two small tables."""
    console = console or Console()
    title = f"{report['data']} / {report['category']} / seed {report['seed']}"
    metrics = Table(title=f"Test results: {title}", title_justify="left")
    metrics.add_column("metric")
    metrics.add_column("value", justify="right")
    for key, value in sorted(report["metrics"].items()):
        metrics.add_row(key, format_metric(value))
    if report["pixel_metrics"] != "computed":
        metrics.add_row("pixel metrics", report["pixel_metrics"])
    metrics.add_row("evaluated at", report["eval_resolution"])
    fitted = report["thresholds"]["fitted_by"]
    metrics.add_row("image threshold", f"{report['thresholds']['image']:.4g} ({fitted['image']})")
    metrics.add_row("train / test time", f"{report['train_seconds']:.0f} s / {report['test_seconds']:.0f} s")
    metrics.add_row("epochs / steps", f"{report['epochs']} / {report['steps']}")
    console.print(metrics)

    files = Table(title="Written", title_justify="left")
    files.add_column("what")
    files.add_column("path")
    files.add_row("metrics", str(output_dir / "metrics.json"))
    for what, path in report.get("files", {}).items():
        files.add_row(what, path)
    files.add_row("config", str(output_dir / "config.yaml"))
    files.add_row("checkpoint (selected)", str(report["checkpoint"]))
    if (last := output_dir / "checkpoints" / "last.ckpt").is_file():  # none when nothing was trained here
        files.add_row("checkpoint (last)", str(last))
    if (output_dir / "csv").is_dir():
        files.add_row("training log", str(output_dir / "csv" / "metrics.csv"))
    for what, where in dashboard_rows(output_dir):
        files.add_row(what, where)
    console.print(files)


def dashboard_rows(output_dir: Path) -> list[tuple[str, str]]:
    """(what, where) of the validation panels, TensorBoard events and W&B run written by the loggers."""
    rows = []
    if (output_dir / "csv" / "images").is_dir():
        rows.append(("validation panels", str(output_dir / "csv" / "images")))
    if (output_dir / "tensorboard").is_dir():
        rows.append(("TensorBoard", f"tensorboard --logdir {output_dir / 'tensorboard'}"))
    if (run := wandb_run_dir(output_dir)) is not None:
        offline = run.name.startswith("offline-run")
        rows.append(
            ("W&B run" + (" (offline)" if offline else ""), f"wandb sync {run}" if offline else str(run))
        )
    return rows


# Lightning's INFO adverts for other products: not about this run.
ADVERTS = ("💡 Tip:",)


class DropAdverts(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERTS)


def quiet_library_messages(warning_patterns: Iterable[str]) -> None:
    """Ignore warnings matching `warning_patterns` (regexes) and drop Lightning's adverts; idempotent."""
    for pattern in warning_patterns:
        warnings.filterwarnings("ignore", message=pattern)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        log = logging.getLogger(name)
        if not any(isinstance(f, DropAdverts) for f in log.filters):
            log.addFilter(DropAdverts())

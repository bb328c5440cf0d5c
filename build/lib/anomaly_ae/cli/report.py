"""anomaly-ae report <multirun dir>: aggregate a sweep's runs into results.md, results.csv, results.png."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from anomaly_ae.cli.common import one_line_errors
from anomaly_ae.reporting.sweep import write_report


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anomaly-ae report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (holds */metrics.json)")
    return 0 if write_report(parser.parse_args(argv).sweep_dir) is not None else 1

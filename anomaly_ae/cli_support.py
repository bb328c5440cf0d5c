"""Small pieces shared by the command-line tools (run, predict, export, explain)."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")


def resolve_device(name: str) -> torch.device:
    """Map "auto" to cuda when available, else cpu; other names go to torch.device as they are."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def write_csv(path: Path, rows: list[dict]) -> None:
    """Rows of equal keys as a CSV file with a header."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

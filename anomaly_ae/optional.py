"""Optional dependencies: imported where they are needed, with one clear line naming the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""


def require(module: str, extra: str) -> ModuleType:
    """Import `module`, or raise MissingExtra saying which `anomaly_ae[extra]` provides it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise MissingExtra(
            f"{module.split('.')[0]} is not installed; it comes with the [{extra}] extra: "
            f"pip install 'anomaly_ae[{extra}]'"
        ) from None

"""Small pieces shared by the command-line tools (train, test, predict, export, explain, check)."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from anomaly_ae.optional import MissingExtra

T = TypeVar("T")


def _config_dir() -> str:
    """The repository's top-level conf/ in a source checkout, else the copy shipped inside the wheel."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"anomaly_ae's conf/ is missing beside {package}: reinstall the package")


# Absolute: Hydra resolves a relative config_path against the importing module, which differs per entry.
CONF_DIR = _config_dir()


def one_line_errors(main: Callable[..., T]) -> Callable[..., T]:
    """Run a command's main; a missing optional dependency ends it with one line (exit code 3)."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except MissingExtra as error:
            print(f"error: {error}", file=sys.stderr)
            raise SystemExit(3) from None  # SystemExit passes Hydra's job runner, which reports Exceptions

    return run

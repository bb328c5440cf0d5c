"""Small pieces shared by the command-line tools (train, test, predict, export, explain, check).

Every error of the project's own making ends a command with one line on stderr,
`error: <what>, <where>, <how to fix>`, and the exit code of its kind (docs/errors.md); HYDRA_FULL_ERROR=1
shows the traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from anomaly_ae.data.check import DataError, NotEnoughData
from anomaly_ae.data.download import DownloadError
from anomaly_ae.errors import ConfigError, OutputExists
from anomaly_ae.optional import MissingExtra

T = TypeVar("T")
__all__ = ["CONF_DIR", "ConfigError", "OutputExists", "exit_code", "one_line_errors"]


def exit_codes() -> tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], int], ...]:
    """(error kinds, exit code), documented in docs/errors.md; 1 stays Python's and Hydra's code for bugs."""
    from anomaly_ae.inference.loading import CheckpointError  # imported late: it pulls in the model
    from anomaly_ae.training.checkpointing import ResumeError

    return (
        (ConfigError, 2),  # bad config value or argument (also: unknown subcommand)
        (MissingExtra, 3),  # optional dependency not installed
        ((DataError, NotEnoughData), 4),  # the data has problems, or too few images
        (FileNotFoundError, 5),  # missing data, input, checkpoint or resume file
        ((CheckpointError, ResumeError), 6),  # not a usable checkpoint or export
        (OutputExists, 7),  # would write over a file: choose another output, or overwrite=true
        ((PermissionError, NotADirectoryError), 8),  # a file or folder cannot be read or written
        (DownloadError, 9),  # a dataset could not be fetched, verified or extracted
        (FloatingPointError, 10),  # training diverged (non-finite loss)
    )


def _config_dir() -> str:
    """The repository's top-level conf/ in a source checkout, else the copy shipped inside the wheel."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package.parent / "conf", package / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"anomaly_ae's conf/ is missing beside {package}: reinstall the package")


# Absolute: Hydra resolves a relative config_path against the importing module, which differs per entry.
CONF_DIR = _config_dir()


def exit_code(error: BaseException) -> int | None:
    """The documented exit code of an error of the project's own making, None for anything else."""
    if _constructor_refusal(error) is not None:
        return 2  # a config value a constructor refused: a bad config value, like ConfigError
    return next((code for kinds, code in exit_codes() if isinstance(error, kinds)), None)


def _constructor_refusal(error: BaseException) -> BaseException | None:
    """The ValueError a class of ours raised while Hydra instantiated it from the config, else None.

    Constructors check their own arguments (e.g. an unknown texture category) with a sentence that names
    the value; Hydra wraps that sentence in an InstantiationException and a traceback.
    """
    from hydra.errors import InstantiationException

    cause = error.__cause__
    if isinstance(error, InstantiationException) and isinstance(cause, ValueError):
        return cause
    return None


def describe(error: BaseException) -> str:
    """The error's sentence; OS errors without one get what, where and how to fix."""
    if (refusal := _constructor_refusal(error)) is not None:
        key = str(error).rsplit("full_key: ", 1)[-1].strip() if "full_key: " in str(error) else "the config"
        return f"{refusal} (in {key}); set it on the command line or in the config file"
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        where = error.filename
        if isinstance(error, PermissionError):
            return f"permission denied: {where}; choose a path you may read and write, or fix its permissions"
        if isinstance(error, FileNotFoundError):
            return f"{where} does not exist; check the path"
        return f"{error.strerror.lower()}: {where}; choose another path"
    return str(error)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized() and HydraConfig.get().mode.name == "MULTIRUN"


def one_line_errors(main: Callable[..., T]) -> Callable[..., T]:
    """Run a command's main; an error of the project's own making ends it with one line and its exit code."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except Exception as error:
            code = exit_code(error)
            if code is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {describe(error)}", file=sys.stderr)
            if _in_multirun():  # the job fails, the sweep's other jobs still run (Hydra reports at the end)
                raise
            raise SystemExit(code) from None  # SystemExit passes Hydra's job runner, which reports Exceptions

    return run

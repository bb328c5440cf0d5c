"""Errors of the project's own making that any stage may raise; the CLI maps each kind to an exit code."""

from __future__ import annotations


class ConfigError(ValueError):
    """A config value or command-line argument is of the wrong type or out of range; names the key."""


class OutputExists(FileExistsError):
    """The command would write over a file it did not create (or over its own input)."""

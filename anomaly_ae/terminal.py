"""Keep the terminal for what matters: library messages that mean nothing to a user are dropped."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable

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

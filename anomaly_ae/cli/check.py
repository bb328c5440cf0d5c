"""anomaly-ae check: compose a run's data config, print the counts, decode and check every file.

anomaly-ae check data=mvtec data.root=/data/mvtec_anomaly_detection category=grid
Exit codes: 0 no problem, 1 problems (each listed with its file), 2 the data is not there.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from rich.console import Console

from anomaly_ae.cli.common import CONF_DIR, one_line_errors
from anomaly_ae.data.check import DataError, count_table


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Compose the run's config from overrides, print the counts, check every file; exit 0, 1 or 2."""
    overrides = list(sys.argv[1:] if argv is None else argv)
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    datamodule = instantiate(cfg.data)
    console = Console()
    try:
        listing = datamodule.listing()
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    console.print(count_table(listing, datamodule.where))
    try:
        datamodule.check(listing)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    console.print(f"OK: {len(listing.samples())} images checked, no problems.")
    return 0

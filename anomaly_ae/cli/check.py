"""anomaly-ae check: compose a run's data config, print the counts, decode and check every file.

anomaly-ae check data=mvtec data.root=/data/mvtec_anomaly_detection category=grid
Exit codes (docs/errors.md): 0 no problem, 4 problems (each listed with its file), 5 the data is not there,
2 a bad config value.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, OverrideParseException
from hydra.utils import instantiate
from rich.console import Console

from anomaly_ae.cli.common import CONF_DIR, ConfigError, one_line_errors
from anomaly_ae.cli.validate import DATA, validate
from anomaly_ae.data.check import count_table


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Compose the run's config from overrides, print the counts, check every file; exit 0, 4 or 5."""
    overrides = list(sys.argv[1:] if argv is None else argv)
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name="config", overrides=overrides)
    except (ConfigCompositionException, OverrideParseException) as error:
        raise ConfigError(f"{error}".splitlines()[0]) from None
    validate(cfg, DATA)
    datamodule = instantiate(cfg.data)
    listing = datamodule.listing()  # FileNotFoundError when the data is not there: exit 5
    console = Console()
    console.print(count_table(listing, datamodule.where))
    datamodule.check(listing)  # DataError listing every problem: exit 4
    console.print(f"OK: {len(listing.samples())} images checked, no problems.")
    return 0

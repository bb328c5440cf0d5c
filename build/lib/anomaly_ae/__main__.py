"""`python -m anomaly_ae <command> ...`: the `anomaly-ae` console script without its launcher."""

from anomaly_ae.cli.main import main

raise SystemExit(main())

"""Entry point of `python -m anomaly_ae.explain`."""

from anomaly_ae.explain.cli import main

main()

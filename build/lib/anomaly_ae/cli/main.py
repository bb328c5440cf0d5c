"""The `anomaly-ae` console script (also `python -m anomaly_ae`): one subcommand per job.

anomaly-ae train category=grid data.root=/data/mvtec_anomaly_detection
anomaly-ae test checkpoint=outputs/grid/.../checkpoints/best.ckpt data.root=/data/other category=grid
anomaly-ae predict checkpoint=... input=photos/ output=predictions
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from anomaly_ae.optional import MissingExtra

# name -> (module whose main() runs it, one line of help). Imported on demand: `--help` stays fast.
COMMANDS = {
    "train": ("anomaly_ae.cli.train", "train on one category and test the selected checkpoint (Hydra)"),
    "test": ("anomaly_ae.cli.test", "evaluate a checkpoint on a data config, without training (Hydra)"),
    "predict": ("anomaly_ae.cli.predict", "anomaly maps, overlays, masks and scores for images (Hydra)"),
    "export": ("anomaly_ae.cli.export", "a checkpoint as one ONNX or .pt2 file, checked against it (Hydra)"),
    "explain": ("anomaly_ae.cli.explain", "LRP relevance heat maps of anomaly scores (Hydra)"),
    "explain-evaluate": (
        "anomaly_ae.cli.explain_evaluate",
        "explanation methods scored on masks (Hydra)",
    ),
    "report": ("anomaly_ae.cli.report", "aggregate a multirun directory into one table"),
    "check": ("anomaly_ae.cli.check", "decode and check every file of a data config"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(
        ["usage: anomaly-ae <command> [key=value ...]", "", "commands:", *lines, "",
         "`anomaly-ae <command> --help` shows a command's options (its config, for Hydra commands)."]
    )  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        command = importlib.import_module(COMMANDS[name][0])
    except MissingExtra as error:  # e.g. explain without zennit: raised while importing the command
        print(f"error: {error}", file=sys.stderr)
        return 3
    sys.argv = [f"anomaly-ae {name}", *rest]  # Hydra and argparse read the command line from sys.argv
    result = command.main()
    return result if isinstance(result, int) else 0  # Hydra apps return None (train: its sweep metric)

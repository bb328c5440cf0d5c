"""One self-contained ONNX or torch.export (.pt2) file of a trained checkpoint's AnomalyScorer.

The exported graph: `images` float32 (N, C, S, S) in [0, 1], with C = in_channels and S = image_size of the
checkpoint -> `maps` (N, S, S) anomaly maps and `scores` (N,) image scores; N is dynamic. Image size,
channels and both thresholds are stored in the file (ONNX metadata / .pt2 extra file "anomaly_ae"),
so `Detector.load` and `anomaly-ae predict` take the exported file as they take a checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from anomaly_ae import __version__
from anomaly_ae.errors import ConfigError, OutputExists
from anomaly_ae.inference.detector import METADATA_KEY, Detector
from anomaly_ae.inference.loading import load_module
from anomaly_ae.model.scorer import AnomalyScorer
from anomaly_ae.optional import require

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}
BATCH = torch.export.Dim("batch", min=1)  # N is dynamic; exported with batch 2 so it is not specialised


def metadata(module, checkpoint: str | Path) -> dict:
    """What a user of the exported file needs besides the graph: input contract and thresholds."""
    hparams = module.hparams
    return {
        "anomaly_ae_version": __version__,
        "checkpoint": str(checkpoint),
        "image_size": int(hparams.image_size),
        "in_channels": int(hparams.in_channels),
        "image_threshold": float(module.image_threshold),
        "pixel_threshold": float(module.pixel_threshold),
        "threshold_source": dict(module.threshold_source),
        "score": dict(hparams.score),
        "input": "images: float32 (N, in_channels, image_size, image_size) in [0, 1]",
        "outputs": "maps: float32 (N, image_size, image_size); scores: float32 (N,)",
    }


def export(
    checkpoint: str | Path, format: str = "onnx", output: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Write `checkpoint` as an ONNX (dynamo exporter) or torch.export .pt2 file; return its path.

    An existing output is replaced only with `overwrite`, and only once the new file is complete (a
    temporary file beside it, then os.replace); the checkpoint itself is never an output.
    """
    if format not in FORMATS:
        raise ConfigError(
            f"format={format} is not one of {', '.join(FORMATS)} (TorchScript export was replaced by "
            "format=pt2): set format=onnx or format=pt2"
        )
    output = Path(output) if output else Path(checkpoint).with_suffix(FORMATS[format])
    refuse_output(Path(checkpoint), output, overwrite)
    module = load_module(checkpoint, "cpu")
    output.parent.mkdir(parents=True, exist_ok=True)
    scorer = module.scorer.eval()
    info = json.dumps(metadata(module, checkpoint))
    size, channels = module.hparams.image_size, module.hparams.in_channels
    example = torch.rand(2, channels, size, size)  # batch 2, not 1: export would specialise a size-1 dim
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")  # same folder: the rename is atomic
    try:
        with torch.no_grad():
            if format == "onnx":
                _export_onnx(scorer, example, partial, info)
            else:
                program = torch.export.export(scorer, (example,), dynamic_shapes={"images": {0: BATCH}})
                torch.export.save(program, str(partial), extra_files={METADATA_KEY: info})
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
    return output


def refuse_output(checkpoint: Path, output: Path, overwrite: bool) -> None:
    """Raise OutputExists for an output that is the checkpoint, or that exists while overwrite is off."""
    if output.exists() and checkpoint.exists() and output.resolve() == checkpoint.resolve():
        raise OutputExists(
            f"output={output} is the checkpoint itself: exporting would replace the weights it is made from; "
            "choose another output, e.g. output=model.onnx"
        )
    if output.exists() and not overwrite:
        raise OutputExists(
            f"output={output} exists already: choose another output, or set overwrite=true to replace it"
        )


def _export_onnx(scorer: AnomalyScorer, example: Tensor, output: Path, info: str) -> None:
    onnx = require("onnx", "export")
    require("onnxscript", "export")  # torch.onnx's dynamo exporter needs it

    # The exporter's graph-optimiser notes ("Replaced initializer ...") reach Hydra's INFO log otherwise.
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch.onnx.export(
        scorer, (example,), str(output), input_names=["images"], output_names=["maps", "scores"],
        dynamic_shapes={"images": {0: BATCH}}, dynamo=True, external_data=False, verbose=False,
    )  # fmt: skip
    model = onnx.load(str(output))
    model.metadata_props.add(key=METADATA_KEY, value=info)
    onnx.save(model, str(output))


def check(checkpoint: str | Path, exported: Path, batch: int = 3) -> tuple[float, float]:
    """Max abs difference of (maps, scores) between the checkpoint and its exported file on random images."""
    reference, copy = Detector.load(checkpoint, "cpu"), Detector.load(exported, "cpu")
    images = torch.rand(batch, reference.in_channels, reference.image_size, reference.image_size)
    with torch.inference_mode():
        maps, scores = reference.scorer(images)
        other_maps, other_scores = copy.scorer(images)
    return float((maps - other_maps).abs().max()), float((scores - other_scores).abs().max())

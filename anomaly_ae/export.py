"""python -m anomaly_ae.export: one self-contained ONNX or TorchScript file from a trained checkpoint.

python -m anomaly_ae.export checkpoint=outputs/grid/.../checkpoints/best.ckpt format=onnx output=model.onnx
python -m anomaly_ae.export checkpoint=... format=torchscript output=model.pt

The exported graph: `images` float32 (N, C, S, S) in [0, 1], with C = in_channels and S = image_size of the
checkpoint -> `maps` (N, S, S) anomaly maps and `scores` (N,) image scores; N is dynamic. Image size,
channels and both thresholds are stored in the file (ONNX metadata / TorchScript extra file "anomaly_ae"),
so `Detector.load` and `python -m anomaly_ae.predict` take the exported file as they take a checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from kornia.filters import get_gaussian_kernel1d
from omegaconf import DictConfig
from torch import Tensor, nn

from anomaly_ae import __version__
from anomaly_ae.cli_support import CONF_DIR
from anomaly_ae.detector import METADATA_KEY, Detector, load_module
from anomaly_ae.module import AnomalyAE
from anomaly_ae.scoring import anomaly_map, image_score

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportedScorer(nn.Module):
    """Autoencoder, residual map, Gaussian smoothing and image score as one plain, traceable module.

    Smoothing is a fixed separable conv with kornia's kernel and reflect padding: the same numbers as
    `scoring.smooth` (tested), without computing the kernel inside the graph.
    """

    def __init__(self, module: AnomalyAE) -> None:
        super().__init__()
        score, size = module.hparams.score, module.hparams.image_size
        self.autoencoder = module.model
        self.reduction, self.topk = score["reduction"], min(score["topk"], size * size)
        sigma = float(score["sigma"])
        # Same radius rule as scoring.smooth: +-4 sigma, capped so reflect padding stays valid.
        self.radius = min(math.ceil(4 * sigma), (size - 1) // 2) if sigma > 0 else 0
        kernel = get_gaussian_kernel1d(2 * self.radius + 1, sigma) if sigma > 0 else torch.ones(1, 1)
        self.register_buffer("kernel", kernel.reshape(1, 1, 1, -1).float())  # (1, 1, 1, K)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(N, C, S, S) float32 in [0, 1] -> (maps (N, S, S), scores (N,))."""
        residual = anomaly_map(images, self.autoencoder(images), sigma=0)[:, None]  # (N, 1, S, S)
        if self.radius:
            r = self.radius
            residual = F.conv2d(F.pad(residual, (r, r, 0, 0), mode="reflect"), self.kernel)  # along W
            residual = F.conv2d(F.pad(residual, (0, 0, r, r), mode="reflect"), self.kernel.mT)  # along H
        maps = residual[:, 0]
        return maps, image_score(maps, self.reduction, self.topk)


def metadata(module: AnomalyAE, checkpoint: str | Path) -> dict:
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


def export(checkpoint: str | Path, format: str = "onnx", output: str | Path | None = None) -> Path:
    """Write `checkpoint` as an ONNX (dynamo exporter) or TorchScript (trace) file; return its path."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r} is not one of {tuple(FORMATS)}")
    module = load_module(checkpoint, "cpu")
    output = Path(output) if output else Path(checkpoint).with_suffix(FORMATS[format])
    output.parent.mkdir(parents=True, exist_ok=True)
    scorer = ExportedScorer(module).eval()
    info = json.dumps(metadata(module, checkpoint))
    size, channels = module.hparams.image_size, module.hparams.in_channels
    example = torch.rand(2, channels, size, size)  # batch 2, not 1: export would specialise a size-1 dim
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # shapes are fixed but N
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.(save|trace).* is deprecated")
        if format == "onnx":
            _export_onnx(scorer, example, output, info)
        else:
            torch.jit.save(torch.jit.trace(scorer, example), str(output), _extra_files={METADATA_KEY: info})
    return output


def _export_onnx(scorer: ExportedScorer, example: Tensor, output: Path, info: str) -> None:
    import onnx

    # The exporter's graph-optimiser notes ("Replaced initializer ...") reach Hydra's INFO log otherwise.
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.WARNING)
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        scorer, (example,), str(output), input_names=["images"], output_names=["maps", "scores"],
        dynamic_shapes={"images": {0: batch}}, dynamo=True, external_data=False, verbose=False,
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


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    output = export(cfg.checkpoint, cfg.format, cfg.output)
    detector = Detector.load(output, "cpu")
    print(f"{output} ({cfg.format}, {output.stat().st_size / 1e6:.1f} MB): {detector}")
    if cfg.check:
        map_error, score_error = check(cfg.checkpoint, output)
        print(f"max abs difference to the checkpoint: maps {map_error:.2e}, scores {score_error:.2e}")


if __name__ == "__main__":
    main()

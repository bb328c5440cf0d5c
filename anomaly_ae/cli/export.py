"""anomaly-ae export: one self-contained ONNX or .pt2 file from a trained checkpoint, checked against it.

anomaly-ae export checkpoint=outputs/grid/.../checkpoints/best.ckpt format=onnx output=model.onnx
anomaly-ae export checkpoint=... format=pt2 output=model.pt2
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from anomaly_ae.cli.common import CONF_DIR, one_line_errors
from anomaly_ae.cli.validate import EXPORT, validate
from anomaly_ae.inference.detector import Detector
from anomaly_ae.inference.export import check, export


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
@one_line_errors
def main(cfg: DictConfig) -> None:
    validate(cfg, EXPORT)
    output = export(cfg.checkpoint, cfg.format, cfg.output, overwrite=cfg.overwrite)
    detector = Detector.load(output, "cpu")
    print(f"{output} ({cfg.format}, {output.stat().st_size / 1e6:.1f} MB): {detector}")
    if cfg.check:
        map_error, score_error = check(cfg.checkpoint, output)
        print(f"max abs difference to the checkpoint: maps {map_error:.2e}, scores {score_error:.2e}")


if __name__ == "__main__":
    main()

"""anomaly-ae explain-evaluate: every explanation method scored against the defect masks of a test split.

anomaly-ae explain-evaluate checkpoint=<run>/checkpoints/best.ckpt data.root=<mvtec-layout root>
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from anomaly_ae.cli.common import CONF_DIR, one_line_errors
from anomaly_ae.explain.evaluate import evaluate


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="explain_evaluate")
@one_line_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)

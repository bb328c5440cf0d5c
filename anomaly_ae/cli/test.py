"""anomaly-ae test: evaluate a trained checkpoint on a data config's test split, without training.

anomaly-ae test checkpoint=outputs/grid/.../checkpoints/best.ckpt data.root=/data/mvtec category=grid
Writes metrics.json, scores.csv, roc_pr.png and examples.png into its own folder, as a training run does.
"""

from __future__ import annotations

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from anomaly_ae.cli.common import CONF_DIR, ConfigError, one_line_errors
from anomaly_ae.cli.train import make_trainer, prepare_output, test_and_report
from anomaly_ae.cli.validate import TEST, validate
from anomaly_ae.evaluation.results import TestRecorder
from anomaly_ae.inference.loading import load_module


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test `cfg.checkpoint` on `cfg.data`; return the test metrics (also in metrics.json)."""
    validate(cfg, TEST)
    prepare_output(cfg)
    module = load_module(cfg.checkpoint)
    size, channels = module.hparams.image_size, module.hparams.in_channels
    datamodule = instantiate(cfg.data, image_size=size)  # the model sees images at its training size
    datamodule.setup("test")
    if datamodule.channels != channels:
        raise ConfigError(
            f"{datamodule.where} has {datamodule.channels}-channel images, the checkpoint {cfg.checkpoint} "
            f"was trained on {channels}: set data.channels={channels}"
        )
    module.hparams.has_masks = datamodule.has_masks  # pixel metrics exactly when this data has masks
    recorder = TestRecorder()
    trainer = make_trainer(cfg, [recorder])
    return test_and_report(cfg, trainer, module, datamodule, recorder, cfg.checkpoint, reload=False)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="test")
@one_line_errors
def main(cfg: DictConfig) -> None:
    evaluate(cfg)

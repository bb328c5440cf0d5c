"""Train on one category, select a checkpoint on validation pseudo-defects, test it, write metrics.

python -m anomaly_ae.run category=grid data.root=/data/mvtec_anomaly_detection
python -m anomaly_ae.run experiment=elpv_demo
python -m anomaly_ae.run -m category=carpet,grid,leather,tile,wood
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from anomaly_ae.module import AnomalyAE
from anomaly_ae.summary import print_summary


def build_module(cfg: DictConfig, datamodule) -> AnomalyAE:
    """The LightningModule for `cfg`, sized to the data (channels) and told whether masks exist."""
    corruption = OmegaConf.to_container(cfg.corruption, resolve=True) or None
    return AnomalyAE(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        corruption=corruption,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        score=OmegaConf.to_container(cfg.score, resolve=True),
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        augment=dict(datamodule.augment),
        in_channels=datamodule.channels,
        has_masks=datamodule.has_masks,
        seed=cfg.seed,
    )


def fit(cfg: DictConfig) -> dict[str, float]:
    """Train, test the selected checkpoint and return the test metrics (also in metrics.json)."""
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # validates the data before any training starts, and gives the channel count
    module = build_module(cfg, datamodule)
    checkpoint = ModelCheckpoint(
        dirpath=output_dir / "checkpoints",
        filename="best",
        monitor=cfg.checkpoint.monitor,
        mode=cfg.checkpoint.mode,
        save_last=True,
    )
    loggers = [instantiate(logger) for logger in (cfg.logger or {}).values()]
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=[checkpoint])

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    selected = checkpoint.best_model_path or checkpoint.last_model_path
    start = time.perf_counter()
    results = trainer.test(module, datamodule=datamodule, ckpt_path=selected, verbose=False)[0]
    test_seconds = time.perf_counter() - start

    metrics = {key: float(value) for key, value in results.items()}
    if not datamodule.has_masks:
        metrics["test/pixel_auroc"] = float("nan")  # no ground-truth masks: not available, not zero
    report = {
        "metrics": metrics,
        "category": cfg.category,
        "seed": cfg.seed,
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "eval_resolution": f"model ({datamodule.image_size}x{datamodule.image_size})",
        "checkpoint": selected,
        "train_seconds": round(train_seconds, 1),
        "test_seconds": round(test_seconds, 1),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
    }
    if trainer.is_global_zero:
        (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        print_summary(report, output_dir)
    return metrics


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    metrics = fit(cfg)
    return metrics.get("test/image_auroc", float("nan"))


if __name__ == "__main__":
    main()

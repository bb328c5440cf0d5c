"""Train on one category, select a checkpoint on validation pseudo-defects, test it, write metrics.

python -m anomaly_ae.run category=grid data.root=/data/mvtec_anomaly_detection
python -m anomaly_ae.run experiment=elpv_demo
python -m anomaly_ae.run -m category=carpet,grid,leather,tile,wood
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_ae.callbacks import run_callbacks
from anomaly_ae.checkpointing import AtomicCheckpointIO, checkpoint_callbacks, resume_path
from anomaly_ae.module import AnomalyAE
from anomaly_ae.results import write_run_outputs
from anomaly_ae.summary import print_summary
from anomaly_ae.terminal import quiet_library_messages

# Library messages that say nothing actionable to a user of this tool; real problems still show.
QUIET = (
    r"You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a",  # by design
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning, not our code
)


def build_module(cfg: DictConfig, datamodule) -> AnomalyAE:
    """The LightningModule for `cfg`, sized to the data (channels) and told whether masks exist."""
    corruption = OmegaConf.to_container(cfg.corruption, resolve=True) or None
    model = OmegaConf.to_container(cfg.model, resolve=True)
    compile_model = model.pop("compile", False)  # how to run the model, not what it is: not an hparam of it
    return AnomalyAE(
        model=model,
        corruption=corruption,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        score=OmegaConf.to_container(cfg.score, resolve=True),
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        augment=dict(datamodule.augment),
        eval=OmegaConf.to_container(cfg.eval, resolve=True),
        in_channels=datamodule.channels,
        image_size=datamodule.image_size,
        has_masks=datamodule.has_masks,
        seed=cfg.seed,
        compile=compile_model,
    )


def fit(cfg: DictConfig) -> dict[str, float]:
    """Train, test the selected checkpoint and return the test metrics (also in metrics.json)."""
    quiet_library_messages(QUIET)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # validates the data before any training starts, and gives the channel count
    module = build_module(cfg, datamodule)
    best, latest = checkpoint_callbacks(
        output_dir / "checkpoints", cfg.checkpoint.monitor, cfg.checkpoint.mode
    )
    loggers = [instantiate(logger) for logger in (cfg.logger or {}).values()]
    trainer = instantiate(
        cfg.trainer,
        logger=loggers or False,
        callbacks=[best, latest, *run_callbacks(cfg)],
        plugins=[AtomicCheckpointIO()],
    )

    start = time.perf_counter()
    trainer.fit(
        module, datamodule=datamodule, ckpt_path=resume_path(cfg.resume, output_dir), weights_only=True
    )
    train_seconds = time.perf_counter() - start
    selected = best.best_model_path or latest.best_model_path
    start = time.perf_counter()
    results = trainer.test(
        module, datamodule=datamodule, ckpt_path=selected, verbose=False, weights_only=True
    )[0]
    test_seconds = time.perf_counter() - start

    metrics = {key: float(value) for key, value in results.items()}
    report = {
        "metrics": metrics,
        "category": cfg.category,
        "seed": cfg.seed,
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "eval_resolution": describe_resolution(datamodule),
        "pixel_metrics": "computed" if datamodule.has_masks else "not available: the data has no masks",
        "thresholds": {
            "image": float(module.image_threshold),
            "pixel": float(module.pixel_threshold),
            "fitted_by": dict(module.threshold_source),
        },
        "checkpoint": selected,
        "config_hash": config_hash(cfg),
        "train_seconds": round(train_seconds, 1),
        "test_seconds": round(test_seconds, 1),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
    }
    if trainer.is_global_zero:
        report["files"] = write_run_outputs(output_dir, module, datamodule, metrics)
        (output_dir / "metrics.json").write_text(json.dumps(report, indent=2))
        print_summary(report, output_dir)
    return metrics


def describe_resolution(datamodule) -> str:
    if datamodule.test_set.original_masks:
        return "ground-truth mask size (anomaly maps upsampled bilinearly)"
    return f"model input ({datamodule.image_size}x{datamodule.image_size})"


def config_hash(cfg: DictConfig) -> str:
    """Short hash of the resolved config minus where it was written: equal hashes, equal experiments."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("output_dir", None)
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:12]


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    metrics = fit(cfg)
    return metrics.get("test/image_auroc", float("nan"))


if __name__ == "__main__":
    main()

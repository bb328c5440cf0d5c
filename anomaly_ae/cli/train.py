"""anomaly-ae train: train on one category, select a checkpoint on validation pseudo-defects, test it.

anomaly-ae train category=grid data.root=/data/mvtec_anomaly_detection   (= python -m anomaly_ae.run ...)
anomaly-ae train experiment=elpv_demo
anomaly-ae train -m category=carpet,grid,leather,tile,wood
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch import Callback
from omegaconf import DictConfig, OmegaConf

from anomaly_ae.cli.common import CONF_DIR, one_line_errors
from anomaly_ae.cli.validate import TRAIN, validate
from anomaly_ae.evaluation.results import TestRecorder, TestResults
from anomaly_ae.inference.loading import read_checkpoint
from anomaly_ae.integrations.dashboards import TestDashboards, ValidationPanel, WandbRunLife
from anomaly_ae.reporting.console import print_summary, quiet_library_messages
from anomaly_ae.reporting.run_outputs import write_run_outputs
from anomaly_ae.training.callbacks import EpochSummary, LogLearningRate, ProgressBar
from anomaly_ae.training.checkpointing import AtomicCheckpointIO, checkpoint_callbacks, resume_path
from anomaly_ae.training.module import VAL_CORRUPTION_SEED, AnomalyAE
from anomaly_ae.training.speed import on_gpu, resolve, sync_every

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
    gpu = on_gpu(cfg.trainer)  # the auto options (training/speed.py) are on for GPUs only
    channels_last = resolve(model.pop("channels_last", False), gpu, "model.channels_last")
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    optim["fused"] = resolve(optim.get("fused", False), gpu, "optim.fused")
    return AnomalyAE(
        model=model,
        corruption=corruption,
        optim=optim,
        score=OmegaConf.to_container(cfg.score, resolve=True),
        loss=OmegaConf.to_container(cfg.loss, resolve=True),
        augment=dict(datamodule.augment),
        eval=OmegaConf.to_container(cfg.eval, resolve=True),
        in_channels=datamodule.channels,
        image_size=datamodule.image_size,
        has_masks=datamodule.has_masks,
        seed=cfg.seed,
        compile=compile_model,
        channels_last=channels_last,
        sync_every_n_steps=host_sync_steps(cfg),
    )


def host_sync_steps(cfg: DictConfig) -> int:
    """logging.sync_every_n_steps resolved: 1 on CPUs, trainer.log_every_n_steps on GPUs for auto."""
    value = cfg.logging.get("sync_every_n_steps", 1)
    return sync_every(value, cfg.trainer.get("log_every_n_steps", 50), on_gpu(cfg.trainer))


def run_callbacks(cfg: DictConfig, recorder: TestRecorder) -> list[Callback]:
    """The callbacks `fit` adds to the checkpointing: progress, epoch lines, pictures and the W&B run."""
    logging = cfg.logging
    callbacks = [
        LogLearningRate(),
        ValidationPanel(logging.panel_every_n_epochs, logging.panel_images, VAL_CORRUPTION_SEED),
        TestDashboards(recorder, logging.test_table),
        WandbRunLife(OmegaConf.to_container(cfg, resolve=True)),
    ]
    if logging.epoch_summary:
        callbacks.append(EpochSummary())
    if cfg.trainer.enable_progress_bar:  # Lightning refuses a progress-bar callback when the bar is off
        callbacks.append(ProgressBar(refresh_rate=host_sync_steps(cfg)))  # reading the loss waits for it
    return callbacks


def make_trainer(cfg: DictConfig, callbacks: list) -> L.Trainer:
    """The Trainer of `cfg.trainer` with the configured loggers; nothing in it is rewritten here."""
    loggers = [instantiate(logger) for logger in (cfg.logger or {}).values()]
    return instantiate(
        cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=[AtomicCheckpointIO()]
    )


def prepare_output(cfg: DictConfig) -> Path:
    """The run's folder, with the resolved config.yaml; seeds everything."""
    quiet_library_messages(QUIET)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)
    return output_dir


def fit(cfg: DictConfig) -> dict[str, float]:
    """Train, test the selected checkpoint and return its metrics: test/* (also in metrics.json) and val/*.

    val/* are the last validation's values, except the checkpoint monitor, which is the selected
    checkpoint's own value: what a sweeper may optimise without looking at test data.
    """
    validate(cfg, TRAIN)  # every value's type and range, before any file is decoded
    output_dir = prepare_output(cfg)
    resume = resume_path(cfg.resume, output_dir)
    if resume is not None:
        read_checkpoint(resume)  # a file that is no checkpoint fails in the words of every other command
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")  # validates the data before any training starts, and gives the channel count
    module = build_module(cfg, datamodule)
    best, latest = checkpoint_callbacks(
        output_dir / "checkpoints", cfg.checkpoint.monitor, cfg.checkpoint.mode
    )
    recorder = TestRecorder()
    trainer = make_trainer(cfg, [best, latest, recorder, *run_callbacks(cfg, recorder)])

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    train_seconds = time.perf_counter() - start
    validation = {
        key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val/")
    }
    if best.best_model_score is not None:
        validation[cfg.checkpoint.monitor] = float(best.best_model_score)
    # None when no checkpoint was written (trainer.fast_dev_run): the weights in memory are tested.
    selected = best.best_model_path or latest.best_model_path or None
    metrics = test_and_report(
        cfg, trainer, module, datamodule, recorder, selected, train_seconds, reload=selected is not None
    )
    return metrics | validation


def test_and_report(
    cfg: DictConfig, trainer: L.Trainer, module: AnomalyAE, datamodule, recorder: TestRecorder,
    checkpoint: str | None, train_seconds: float = 0.0, reload: bool = True,
) -> dict[str, float]:  # fmt: skip
    """Test `checkpoint`, write the run's outputs, print the table.

    reload=False: the module already holds the checkpoint's weights (`anomaly-ae test`): test them as is.
    """
    start = time.perf_counter()
    ckpt_path = checkpoint if reload else None
    trainer.test(module, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False, weights_only=True)
    test_seconds = time.perf_counter() - start
    results: TestResults = recorder.results
    output_dir = Path(cfg.output_dir)
    report = {
        "metrics": results.metrics,
        "category": cfg.category,
        "seed": cfg.seed,
        "data": cfg.data._target_.rsplit(".", 1)[-1],
        "eval_resolution": describe_resolution(datamodule),
        "pixel_metrics": "computed" if datamodule.has_masks else "not available: the data has no masks",
        "thresholds": results.thresholds,
        "checkpoint": checkpoint or "none written (trainer.fast_dev_run): the weights in memory were tested",
        "config_hash": config_hash(cfg),
        "train_seconds": round(train_seconds, 1),
        "test_seconds": round(test_seconds, 1),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
    }
    if trainer.is_global_zero:
        report["files"] = write_run_outputs(output_dir, results)
        text = json.dumps(finite_or_null(report), indent=2, allow_nan=False)  # null, never a bare NaN
        (output_dir / "metrics.json").write_text(text)
        print_summary(report, output_dir)
    return dict(results.metrics)


def finite_or_null(value):
    """`value` with NaN and infinities replaced by None: metrics.json stays valid JSON (null)."""
    if isinstance(value, dict):
        return {key: finite_or_null(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def describe_resolution(datamodule) -> str:
    if datamodule.test_set.original_masks:
        return "ground-truth mask size (anomaly maps upsampled bilinearly)"
    return f"model input ({datamodule.image_size}x{datamodule.image_size})"


def config_hash(cfg: DictConfig) -> str:
    """Short hash of the resolved config minus where it was written: equal hashes, equal experiments."""
    container = OmegaConf.to_container(cfg, resolve=True)
    container.pop("output_dir", None)
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()[:12]


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
@one_line_errors
def main(cfg: DictConfig) -> float:
    """Returns `sweep_metric` (a validation metric, never a test one) to Hydra sweepers."""
    metrics = fit(cfg)
    return metrics.get(cfg.sweep_metric, float("nan"))


if __name__ == "__main__":
    main()

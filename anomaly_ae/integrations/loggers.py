"""Dashboard back-ends: a W&B logger that never prompts, the sweep's W&B report run, and where logs went."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from anomaly_ae.optional import require


def wandb_mode(mode: str | None) -> str | None:
    """The W&B mode to run in: the configured one, else WANDB_MODE, else online only with a login.

    Without a login wandb.init would prompt (or fail in a batch job); offline runs are kept on disk
    for a later `wandb sync`.
    """
    if mode is not None or os.environ.get("WANDB_MODE"):
        return mode  # None lets wandb read WANDB_MODE itself
    wandb = require("wandb", "wandb")
    if os.environ.get("WANDB_API_KEY"):  # a login in the environment: no need to start wandb's service to ask
        return None
    return None if wandb.login(prompt=False, verify=False) else "offline"


def sweep_group() -> str | None:
    """The multirun's folder name (e.g. 2026-11-23_10-00-00), so that a sweep's runs are grouped."""
    if not HydraConfig.initialized() or HydraConfig.get().mode.name != "MULTIRUN":
        return None
    return Path(HydraConfig.get().sweep.dir).name


class SelectedCheckpointWandbLogger(WandbLogger):
    """WandbLogger whose model artifact is the selected checkpoint (best.ckpt) only.

    The every-epoch last.ckpt callback monitors nothing, so Lightning would tag it `best` too and move the
    alias off the selected model; it exists for resuming and stays local.
    """

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if checkpoint_callback.monitor is not None:
            super().after_save_checkpoint(checkpoint_callback)


def wandb_logger(mode: str | None = None, group: str | None = None, **kwargs: Any) -> WandbLogger:
    """WandbLogger with `group` defaulting to the sweep and an offline fallback when not logged in."""
    require("wandb", "wandb")
    chosen = wandb_mode(mode)
    if chosen == "offline" and mode is None and not os.environ.get("WANDB_MODE"):
        where = Path(kwargs.get("save_dir") or ".") / "wandb"
        rank_zero_info(
            f"W&B: no login found, so logging offline; upload later: wandb sync {where}/offline-run-*"
        )
    if chosen is not None:
        kwargs["mode"] = chosen
    logger = SelectedCheckpointWandbLogger(group=group or sweep_group(), **kwargs)
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)  # Lightning passes None; wandb 0.31 warns
    return logger


def tensorboard_logger(**kwargs: Any) -> TensorBoardLogger:
    """Lightning's TensorBoardLogger, or one line naming the extra when tensorboard is missing."""
    require("tensorboard", "tensorboard")
    return TensorBoardLogger(**kwargs)


def wandb_run_dir(output_dir: Path) -> Path | None:
    """The W&B run folder of a run dir (offline-run-* or run-*), if W&B logged there."""
    latest = Path(output_dir) / "wandb" / "latest-run"
    return latest.resolve() if latest.exists() else None


def log_sweep_report(logger_cfg: dict, sweep_dir: Path) -> None:
    """One W&B run (job_type "report") in the sweep's group: the results table, its chart and the means.

    logger_cfg: project, entity, group and mode of the wandb logger config (the rest is per run).
    """
    wandb = require("wandb", "wandb")

    sweep_dir = Path(sweep_dir)
    rows = list(csv.DictReader((sweep_dir / "results.csv").open()))
    run = wandb.init(
        project=logger_cfg.get("project"),
        entity=logger_cfg.get("entity"),
        group=logger_cfg.get("group") or sweep_dir.name,
        job_type="report",
        name=f"report_{sweep_dir.name}",
        tags=["report"],
        dir=sweep_dir,
        mode=wandb_mode(logger_cfg.get("mode")),
    )
    try:
        columns = list(rows[0])
        run.log(
            {
                "sweep/results": wandb.Table(
                    columns=columns, data=[[row[c] for c in columns] for row in rows]
                ),
                "sweep/chart": wandb.Image(str(sweep_dir / "results.png")),
            }
        )
        for row in rows:
            if row["seeds"] == "":  # the texture / object / overall means
                means = {key: float(row[key]) for key in columns[2:] if not key.endswith("_std")}
                run.summary.update({f"sweep/{row['category']}/{key}": value for key, value in means.items()})
    finally:
        run.finish()

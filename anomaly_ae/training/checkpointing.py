"""Checkpoints that survive a kill: atomic writes, and resume=last that skips a damaged file."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """torch.save to a temporary file next to the target, fsync, then os.replace onto it.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the system
    temp dir: on a cluster that is another filesystem, and the final move then copies into the target
    non-atomically. A file in the same folder renames in one step, so a kill leaves the old checkpoint.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if "://" in str(path):  # remote storage: its own upload semantics apply
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        try:
            with open(partial, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())  # on disk before the rename makes it visible
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, path)


def checkpoint_callbacks(folder: Path, monitor: str, mode: str) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """best.ckpt (selected on `monitor`) and last.ckpt (after every training epoch, to resume from).

    Not ModelCheckpoint(save_last=True): that rewrites last.ckpt only when `monitor` improves, so a killed
    run would resume from its last improvement, not from its last epoch.
    """
    best = ModelCheckpoint(dirpath=folder, filename="best", monitor=monitor, mode=mode)
    latest = ModelCheckpoint(
        dirpath=folder,
        filename="last",
        monitor=None,  # keep the newest one
        every_n_epochs=1,
        save_on_train_epoch_end=True,  # also in epochs without validation (check_val_every_n_epoch > 1)
        enable_version_counter=False,  # overwrite last.ckpt rather than write last-v1.ckpt
    )
    return best, latest


def loadable(path: Path) -> bool:
    """Whether `path` is a complete checkpoint (loads with weights_only=True and has weights)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # truncated zip, empty file, unpickling error: all mean "not usable"
        return False
    return isinstance(checkpoint, dict) and "state_dict" in checkpoint


class ResumeError(ValueError):
    """resume=last found no checkpoint of the run that loads."""


def remove_partials(folder: Path) -> None:
    """Delete temporary files that a killed AtomicCheckpointIO write left behind; never a complete file."""
    for partial in folder.glob(".*.partial"):
        partial.unlink(missing_ok=True)
        log.info(f"removed {partial}, a checkpoint write that never completed")


def resume_path(resume: str | None, output_dir: Path) -> str | None:
    """The checkpoint to continue from: None, "last" (this run dir's checkpoints) or a path.

    resume=last takes checkpoints/last.ckpt, or, when that file is missing (a kill while the first one
    was written) or damaged (a filesystem without atomic renames), the newest other checkpoint of the
    run that loads, with a warning. Stale partial writes are removed either way.
    """
    folder = output_dir / "checkpoints"
    remove_partials(folder)
    if resume is None:
        return None
    if resume != "last":
        if not Path(resume).is_file():
            raise FileNotFoundError(
                f"resume={resume}: no checkpoint at {resume}; pass resume=<path to a .ckpt>, or resume=last "
                "with hydra.run.dir (or output_dir) pointing at the run's directory"
            )
        return str(resume)
    path = folder / "last.ckpt"
    if path.is_file() and loadable(path):
        return str(path)
    others = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)
    fallback = next((p for p in others if p != path and loadable(p)), None)
    if fallback is None and not path.is_file():
        raise FileNotFoundError(
            f"resume=last: no checkpoint at {path}. Resume a run by pointing hydra.run.dir (or "
            "output_dir) at its directory with resume=last, or pass resume=<path to a .ckpt>."
        )
    if fallback is None:
        raise ResumeError(
            f"resume=last: {path} is damaged (it does not load) and no other checkpoint in {folder} "
            "loads either; start the run again without resume."
        )
    state = "is damaged (it does not load)" if path.is_file() else "was never completed (the run was stopped)"
    log.warning(f"resume=last: {path} {state}; resuming from {fallback} instead.")
    return str(fallback)

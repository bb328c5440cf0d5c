"""How fast, not what, is trained: the `auto` options that are on for GPUs and off on CPUs.

Each is a config value (`model.channels_last`, `optim.fused`, `logging.sync_every_n_steps`), so CPU runs
stay as they were and any one can be switched off on a GPU. Their GPU speed-ups are still to be measured
(`experiments/gpu_check.py`, docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices


def on_gpu(trainer: Mapping) -> bool:
    """Whether the configured Trainer runs on GPUs: accelerator gpu/cuda, or auto with CUDA present."""
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator == "auto":
        return torch.cuda.is_available()
    return accelerator in ("gpu", "cuda")


def resolve(value: bool | str, gpu: bool, name: str) -> bool:
    """true / false as given; auto: `gpu`."""
    if str(value).lower() == "auto":
        return gpu
    if isinstance(value, bool):
        return value
    raise ValueError(f"{name}={value!r} is not one of auto, true, false")


def sync_every(value: int | str, log_every_n_steps: int, gpu: bool) -> int:
    """Steps between host synchronisations (non-finite check, progress bar); auto: 1 on CPUs, where a
    synchronisation costs nothing, else as often as the loggers write (trainer.log_every_n_steps)."""
    if str(value).lower() == "auto":
        return max(1, log_every_n_steps) if gpu else 1
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"logging.sync_every_n_steps={value!r} is not auto or a positive integer")
    return value


def adam(params: Iterable[torch.nn.Parameter], fused: bool, **kwargs) -> torch.optim.Adam:
    """Adam, fused into one kernel per step when asked and supported (else the default, with a warning)."""
    params = list(params)
    if fused:
        # torch checks devices and dtypes only at the first step: check here, where falling back is easy
        devices = _get_fused_kernels_supported_devices()
        unsupported = sorted({f"{p.device.type} {p.dtype}" for p in params
                              if p.device.type not in devices or not p.is_floating_point()})  # fmt: skip
        try:
            if not unsupported:
                return torch.optim.Adam(params, fused=True, **kwargs)
        except (RuntimeError, ValueError) as error:  # e.g. an older torch without it
            unsupported = [str(error)]
        rank_zero_warn(f"optim.fused=true: fused Adam is not supported for {unsupported}; using the default")
    return torch.optim.Adam(params, **kwargs)

"""Every documented config value checked for type and range before a command decodes any data.

One table per command (train, test, predict, export, explain, check) over the composed config: a value of
the wrong type or out of range stops the command with a ConfigError that names the key, the value and
what is allowed. Keys absent from the composed config (e.g. corruption.* with corruption=none) are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from anomaly_ae.corruption.structured import FILLS, FOREIGN_SOURCES, SHAPES
from anomaly_ae.errors import ConfigError
from anomaly_ae.model.autoencoder import ACTIVATIONS, NORMS, OUTPUTS, PADDINGS, SKIP_GATES
from anomaly_ae.model.scoring import (
    COMPONENTS,
    LEARNED,
    NORMALIZATIONS,
    REDUCTIONS,
    RESIDUALS,
    uses_segmenter,
)

# Above this side the first full-resolution layer alone holds width x side^2 float32 activations per image
# (32 x 4096^2 x 4 B = 2 GB): larger photos are tiled or resized before they reach the model.
MAX_IMAGE_SIZE = 4096
PRECISIONS = (
    "64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64", "32", "16", "bf16",
    64, 32, 16, "transformer-engine", "transformer-engine-float16",
)  # fmt: skip
_ABSENT = object()


@dataclass(frozen=True)
class Rule:
    """A test on one value and the allowed values in words ("an integer >= 1")."""

    ok: Callable[[Any], bool]
    allowed: str


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def integer(low: int | None = None, high: int | None = None) -> Rule:
    if high is not None:
        words = f"an integer in [{low}, {high}]"
    else:
        words = "an integer" if low is None else f"an integer >= {low}"
    return Rule(lambda v: _is_int(v) and (low is None or v >= low) and (high is None or v <= high), words)


def number(low: float | None = None, high: float | None = None, open_low=False, open_high=False) -> Rule:
    def ok(v) -> bool:
        if not _is_number(v):
            return False
        above = low is None or (v > low if open_low else v >= low)
        return above and (high is None or (v < high if open_high else v <= high))

    if high is None:
        words = "a number" if low is None else f"a number {'>' if open_low else '>='} {low}"
    else:
        words = f"a number in {'(' if open_low else '['}{low}, {high}{')' if open_high else ']'}"
    return Rule(ok, words)


def one_of(*values) -> Rule:
    return Rule(
        lambda v: v in values and not isinstance(v, bool),
        f"one of {', '.join(dict.fromkeys(map(str, values)))}",
    )


def subset(values: Sequence[str]) -> Rule:
    return Rule(
        lambda v: isinstance(v, list) and bool(v) and set(v) <= set(values),
        f"a non-empty list of {', '.join(values)}",
    )


def nullable(rule: Rule) -> Rule:
    return Rule(lambda v: v is None or rule.ok(v), f"null or {rule.allowed}")


BOOLEAN = Rule(lambda v: isinstance(v, bool), "true or false")
AUTO_BOOLEAN = Rule(lambda v: isinstance(v, bool) or v == "auto", "auto, true or false")  # auto: on GPUs
TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
PATH = Rule(lambda v: isinstance(v, str) and v != "", "a path")
VAL_KEY = Rule(lambda v: isinstance(v, str) and v.startswith("val/"), "a validation metric (val/...)")
DILATIONS = Rule(lambda v: isinstance(v, list) and bool(v) and all(_is_int(d) and d >= 1 for d in v),
                 "a non-empty list of integers >= 1")  # fmt: skip
BETAS = Rule(lambda v: isinstance(v, list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
             "two numbers in [0, 1)")  # fmt: skip
DEVICE = Rule(lambda v: isinstance(v, str) and v.split(":")[0] in ("auto", "cpu", "cuda", "mps"),
              "auto, cpu, cuda, cuda:<index> or mps")  # fmt: skip
BATCHES = Rule(lambda v: v is None or (_is_int(v) and v >= 0) or (isinstance(v, float) and 0 <= v <= 1),
               "an integer >= 0 (batches) or a number in [0, 1] (a fraction)")  # fmt: skip
FAST_DEV_RUN = Rule(lambda v: isinstance(v, bool) or (_is_int(v) and v >= 0), "true, false or an int >= 0")

DATA = {
    "data.image_size": integer(1, MAX_IMAGE_SIZE),
    "data.batch_size": integer(1),
    "data.eval_batch_size": integer(1),
    "data.num_workers": integer(0),
    "data.val_fraction": number(0, 1, open_high=True),
    "data.test_fraction": number(0, 1, open_low=True, open_high=True),
    "data.train_fraction": number(0, 1, open_low=True, open_high=True),
    "data.channels": nullable(one_of(1, 3)),
    "data.cache": BOOLEAN,
    "data.pin_memory": BOOLEAN,
    "data.download": BOOLEAN,
    "data.resident": AUTO_BOOLEAN,
    "data.resident_max_mb": number(0),
    "data.resident_eval_batch_size": nullable(integer(1)),
    "category": TEXT,
    "seed": integer(),
}
TRAIN = DATA | {
    "resume": nullable(PATH),
    "sweep_metric": VAL_KEY,
    "logging.panel_every_n_epochs": integer(0),
    "logging.panel_images": integer(1),
    "logging.test_table": BOOLEAN,
    "logging.epoch_summary": BOOLEAN,
    "optim.lr": number(0, open_low=True),
    "optim.betas": BETAS,
    "optim.weight_decay": number(0),
    "optim.scheduler": one_of("cosine", "none"),
    "optim.warmup_steps": integer(0),
    "optim.scale_lr_with_world_size": BOOLEAN,
    "loss.clean_weight": nullable(number(0, 1)),
    "loss.gradient_weight": number(0),
    "score.sigma": number(0),
    "score.reduction": one_of(*REDUCTIONS),
    "score.topk": integer(1),
    "score.normalize": one_of(*NORMALIZATIONS),
    "score.flip_average": BOOLEAN,
    "score.residual": one_of(*RESIDUALS),
    "score.segmenter_width": integer(1),
    "score.segmenter_depth": integer(1),
    "eval.resolution": one_of("mask", "model"),
    "eval.threshold": one_of("f1", "quantile"),
    "eval.quantile": number(0, 1, open_low=True, open_high=True),
    "eval.max_fpr": number(0, 1, open_low=True),
    "checkpoint.monitor": VAL_KEY,
    "checkpoint.mode": one_of("min", "max"),
    "model.width": integer(1),
    "model.max_width": integer(1),
    "model.depth": integer(1, 10),
    "model.dilations": DILATIONS,
    "model.norm": one_of(*NORMS),
    "model.activation": one_of(*ACTIVATIONS),
    "model.skips": BOOLEAN,
    "model.skip_init_logit": number(),
    "model.skip_min_stride": Rule(lambda v: _is_int(v) and v >= 2 and not v & (v - 1), "a power of 2 >= 2"),
    "model.skip_gate": one_of(*SKIP_GATES),
    "model.skip_dropout": number(0, 1, open_high=True),
    "model.upsample": one_of("transposed", "bilinear"),
    "model.padding_mode": one_of(*PADDINGS),
    "model.down_kernel": one_of(3, 4),
    "model.output": one_of(*OUTPUTS),
    "model.bottleneck_channels": nullable(integer(1)),
    "model.compile": BOOLEAN,
    "model.channels_last": AUTO_BOOLEAN,
    "optim.fused": AUTO_BOOLEAN,
    "logging.sync_every_n_steps": Rule(
        lambda v: v == "auto" or (_is_int(v) and v >= 1), "auto or an integer >= 1"
    ),
    "corruption.p_corrupt": number(0, 1),
    "corruption.max_regions": integer(1),
    "corruption.min_size": number(0, 1, open_low=True),
    "corruption.max_size": number(0, 1, open_low=True),
    "corruption.max_aspect": number(1),
    "corruption.shapes": subset(SHAPES),
    "corruption.fill": one_of(*FILLS),
    "corruption.sources": subset(FOREIGN_SOURCES),
    "corruption.alpha_min": number(0, 1),
    "corruption.jitter": number(0),
    "corruption.opaque_fraction": number(0, 1),
    "corruption.min_scale_change": number(0),
    "corruption.elastic": number(0),
    "corruption.gaussian_noise_std": number(0),
    "corruption.std": number(0, open_low=True),
    "corruption.clip": BOOLEAN,
    "trainer.max_epochs": nullable(integer(-1)),
    "trainer.num_nodes": integer(1),
    "trainer.precision": one_of(*PRECISIONS),
    "trainer.check_val_every_n_epoch": nullable(integer(1)),
    "trainer.log_every_n_steps": integer(1),
    "trainer.fast_dev_run": FAST_DEV_RUN,
    "trainer.limit_train_batches": BATCHES,
    "trainer.limit_val_batches": BATCHES,
    "trainer.limit_test_batches": BATCHES,
}
TEST = DATA | {"checkpoint": PATH, "eval.resolution": one_of("mask", "model")}
PREDICT = {
    "checkpoint": PATH, "input": PATH, "output": PATH, "device": DEVICE, "batch_size": integer(1),
    "map_format": one_of("npy", "png16"), "overlay_vmax": nullable(number(0, open_low=True)),
    "progress": BOOLEAN, "overwrite": BOOLEAN,
}  # fmt: skip
EXPORT = {"checkpoint": PATH, "format": one_of("onnx", "pt2"), "output": nullable(PATH), "check": BOOLEAN,
          "overwrite": BOOLEAN}  # fmt: skip
EXPLAIN = {
    "checkpoint": PATH, "input": PATH, "output": PATH, "device": DEVICE, "batch_size": integer(1),
    "image_size": nullable(integer(1, MAX_IMAGE_SIZE)), "reduction": nullable(one_of(*REDUCTIONS)),
    "overwrite": BOOLEAN,
}  # fmt: skip
# Why a value is refused, where the allowed range alone does not say it.
REASONS = {
    "data.image_size": f" (tile or resize larger images first: {MAX_IMAGE_SIZE} px needs GBs per image)",
    "format": " (TorchScript export was replaced by format=pt2)",
    "sweep_metric": " (a sweeper must never tune on test data)",
    "checkpoint.monitor": " (checkpoints are selected on validation pseudo-defects, never on test data)",
    "score.sigma": " (pixels of Gaussian smoothing; 0 turns smoothing off)",
}


def _value(cfg: DictConfig, key: str):
    """The resolved value at `key` (lists as lists), _ABSENT when the config has no such key."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not isinstance(node, DictConfig) or leaf not in set(node.keys()):  # `in node`: False for ???
        return _ABSENT
    if OmegaConf.is_missing(node, leaf):
        raise ConfigError(f"{key} is not set: give {key}=... on the command line")
    value = node[leaf]
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _shown(value) -> str:
    """The value as it is written on the command line."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def validate(cfg: DictConfig, rules: dict[str, Rule]) -> None:
    """Raise ConfigError for the first key whose value breaks its rule, then for cross-key conflicts."""
    for key, rule in rules.items():
        value = _value(cfg, key)
        if value is not _ABSENT and not rule.ok(value):
            raise ConfigError(
                f"{key}={_shown(value)} is not allowed: {key} must be {rule.allowed}{REASONS.get(key, '')}; "
                "set it on the command line or in the config file"
            )
    if "model.depth" in rules:
        _check_training(cfg)
    if "device" in rules:
        _check_device(cfg.device)


def _check_training(cfg: DictConfig) -> None:
    size, depth = _value(cfg, "data.image_size"), _value(cfg, "model.depth")
    if _ABSENT not in (size, depth) and size % 2**depth:
        step = 2**depth
        below, above = max(step, size // step * step), (size // step + 1) * step
        raise ConfigError(
            f"data.image_size={size} is not a multiple of 2**model.depth = {step} (the autoencoder halves "
            f"the image model.depth={depth} times and doubles it back): use data.image_size={below} or "
            f"{above}"
        )
    width, max_width = _value(cfg, "model.width"), _value(cfg, "model.max_width")
    if _ABSENT not in (width, max_width) and max_width < width:
        raise ConfigError(f"model.max_width={max_width} is below model.width={width}: raise model.max_width")
    low, high = _value(cfg, "corruption.min_size"), _value(cfg, "corruption.max_size")
    if _ABSENT not in (low, high) and low > high:
        raise ConfigError(
            f"corruption.min_size={low} is above corruption.max_size={high}: lower min_size or raise max_size"
        )
    residual, normalize = _value(cfg, "score.residual"), _value(cfg, "score.normalize")
    if residual in COMPONENTS and normalize not in ("pixel", _ABSENT):
        raise ConfigError(
            f"score.residual={residual} averages z-scores of its maps and needs score.normalize=pixel; "
            f"got score.normalize={normalize}: set score.normalize=pixel or choose another score.residual"
        )
    if residual == LEARNED and normalize not in ("pixel", _ABSENT):
        raise ConfigError(
            f"score.residual={residual} z-scores the segmenter's logits on clean images and needs "
            f"score.normalize=pixel; got score.normalize={normalize}: set score.normalize=pixel"
        )
    if residual is not _ABSENT and uses_segmenter(residual) and "corruption" in cfg and not cfg.corruption:
        raise ConfigError(
            f"score.residual={residual} trains its segmenter on the corruption's masks, but corruption=none: "
            "choose a corruption (corruption=families) or another score.residual"
        )
    if _value(cfg, "trainer.max_epochs") == 0:
        raise ConfigError(
            "trainer.max_epochs=0 trains nothing, so there is no checkpoint to select or test: set "
            "trainer.max_epochs >= 1, or evaluate a trained checkpoint with `anomaly-ae test checkpoint=...`"
        )


def _check_device(device: str) -> None:
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device} but no CUDA GPU is visible here: use device=auto or device=cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device=mps but Apple's MPS backend is not available here: use device=auto or cpu")

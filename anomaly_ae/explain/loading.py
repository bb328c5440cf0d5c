"""Load a trained checkpoint as an AnomalyScore, plus the training run's settings saved beside it."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_ae.cli_support import resolve_device  # noqa: F401  (re-exported)
from anomaly_ae.explain.relevance import AnomalyScore
from anomaly_ae.model import architecture


def read_checkpoint(checkpoint: str | Path) -> dict:
    """A Lightning checkpoint of `anomaly_ae.run`, as a dict with hyper_parameters and state_dict."""
    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    return torch.load(checkpoint, map_location="cpu", weights_only=True)


def training_config(checkpoint: str | Path) -> DictConfig | None:
    """The config.yaml that `anomaly_ae.run` wrote into <run>/, for a checkpoint in <run>/checkpoints/."""
    path = Path(checkpoint).resolve().parent.parent / "config.yaml"
    return OmegaConf.load(path) if path.is_file() else None


def training_value(checkpoint: str | Path, key: str, given, name: str):
    """`given` unless None, else `key` from the training run's config; a clear error when neither exists."""
    if given is not None:
        return given
    run = training_config(checkpoint)
    value = OmegaConf.select(run, key) if run is not None else None
    if value is None:
        raise ValueError(
            f"{name}=null needs the training run's config.yaml beside {checkpoint}; set {name}=..."
        )
    return value


def image_size(checkpoint: str | Path, given: int | None) -> int:
    """`given`, else the size the checkpoint was trained at (its hyper-parameters, else the run's config)."""
    if given is not None:
        return int(given)
    stored = read_checkpoint(checkpoint)["hyper_parameters"].get("image_size")
    return int(stored or training_value(checkpoint, "data.image_size", None, "image_size"))


def load_scorer(checkpoint: str | Path, device: torch.device, reduction: str | None = None) -> AnomalyScore:
    """The checkpoint's autoencoder and scoring on `device`, in eval mode; `reduction` overrides its own."""
    # Only the autoencoder and the score settings are read, not the whole LightningModule: checkpoints stay
    # explainable when the module gains constructor arguments, and the CLI does not import Lightning.
    content = read_checkpoint(checkpoint)
    hparams = content["hyper_parameters"]
    autoencoder = instantiate(architecture(hparams["model"]), in_channels=hparams["in_channels"])
    prefix = "model."
    weights = {k[len(prefix) :]: v for k, v in content["state_dict"].items() if k.startswith(prefix)}
    autoencoder.load_state_dict(weights)
    autoencoder = autoencoder.to(device).requires_grad_(False)  # only input gradients are needed
    score = hparams["score"]
    return AnomalyScore(autoencoder, score["sigma"], reduction or score["reduction"], score["topk"])

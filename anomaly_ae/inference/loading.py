"""The one checkpoint loader: a training checkpoint as an AnomalyAE, or as a bare AnomalyScorer.

Every command that reads a checkpoint (test, predict, export, explain, Detector) comes through here, so
a checkpoint is validated the same way everywhere and always loaded with weights_only=True.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from anomaly_ae.model.autoencoder import architecture
from anomaly_ae.model.scorer import AnomalyScorer
from anomaly_ae.training.module import AnomalyAE, upgrade_state_dict

_REQUIRED_HPARAMS = ("model", "score", "in_channels", "image_size")
# Targets written into checkpoints before the package was grouped by stage; old checkpoints keep loading.
LEGACY_TARGETS = {
    "anomaly_ae.model.ConvAutoencoder": "anomaly_ae.model.autoencoder.ConvAutoencoder",
    "anomaly_ae.corruption.StructuredCorruption": "anomaly_ae.corruption.structured.StructuredCorruption",
    "anomaly_ae.gaussian_noise.GaussianNoiseCorruption": (
        "anomaly_ae.corruption.gaussian.GaussianNoiseCorruption"
    ),
}


class CheckpointError(ValueError):
    """A file that is not an anomaly_ae checkpoint or export, or one this version cannot load."""


def resolve_device(name: str) -> torch.device:
    """Map "auto" to cuda when available, else cpu; other names go to torch.device as they are."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _problem(content) -> str | None:
    """What makes a loaded checkpoint dict unusable, or None."""
    if not isinstance(content, dict) or "state_dict" not in content or "hyper_parameters" not in content:
        return "it has no 'state_dict' and 'hyper_parameters' (not a checkpoint of `anomaly-ae train`)"
    hparams, state = content["hyper_parameters"], content["state_dict"]
    target = str((hparams.get("model") or {}).get("_target_", ""))
    if not target.startswith("anomaly_ae."):
        return f"its model {target or '(none)'} is not an anomaly_ae model"
    missing = [key for key in _REQUIRED_HPARAMS if hparams.get(key) is None]
    missing += [key for key in ("image_threshold", "pixel_threshold") if key not in state]
    if missing:
        return f"it lacks {', '.join(missing)} (written by an older anomaly_ae: retrain it with this version)"
    return None


def _upgrade(content: dict) -> dict:
    """Bring a checkpoint of an earlier layout up to date: class paths and state_dict keys."""
    hparams = content["hyper_parameters"]
    for key in ("model", "corruption"):
        config = hparams.get(key)
        if isinstance(config, dict) and config.get("_target_") in LEGACY_TARGETS:
            hparams[key] = {**config, "_target_": LEGACY_TARGETS[config["_target_"]]}
    upgrade_state_dict(content["state_dict"])
    return content


def read_checkpoint(checkpoint: str | Path) -> dict:
    """The checkpoint's dict (hyper_parameters, state_dict, ...), validated and brought up to date.

    Raises FileNotFoundError, or CheckpointError with a sentence that says what is wrong; never passes on
    torch's unpickling advice to load with weights_only=False, which is unsafe for a file of unknown origin.
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # "Unsupported global: GLOBAL x.y", or for blocked modules "unsupported GLOBAL x.y whose module ..."
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", str(error))
        if found is None:  # not a pickle at all, e.g. a text file
            raise CheckpointError(f"checkpoint {path} is not a PyTorch checkpoint") from None
        raise CheckpointError(
            f"checkpoint {path} holds a Python object ({found[1]}) that weights_only=True refuses to load: "
            "it was not written by `anomaly-ae train`"
        ) from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointError(f"checkpoint {path} is not a PyTorch checkpoint: {error}") from None
    problem = _problem(content)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} cannot be used: {problem}")
    return _upgrade(content)


def load_module(checkpoint: str | Path, device: str | torch.device = "cpu") -> AnomalyAE:
    """The trained AnomalyAE (scorer, thresholds, settings) in eval mode on `device`."""
    content = read_checkpoint(checkpoint)
    try:
        module = AnomalyAE(**content["hyper_parameters"])
        module.load_state_dict(content["state_dict"])
    except (RuntimeError, TypeError, KeyError, ValueError) as error:  # e.g. renamed arguments or layers
        raise CheckpointError(
            f"checkpoint {checkpoint} does not match this version of anomaly_ae: {error}"
        ) from None
    module.on_load_checkpoint(content)
    return module.to(device).eval()


def load_scorer(checkpoint: str | Path, device: torch.device, reduction: str | None = None) -> AnomalyScorer:
    """Only the checkpoint's AnomalyScorer, in eval mode without parameter gradients; `reduction` overrides.

    Not the whole LightningModule: the scorer stays loadable when the module gains constructor arguments.
    """
    content = read_checkpoint(checkpoint)
    hparams = content["hyper_parameters"]
    autoencoder = instantiate(architecture(hparams["model"]), in_channels=hparams["in_channels"])
    score = {**hparams["score"], **({"reduction": reduction} if reduction else {})}
    scorer = AnomalyScorer.from_config(autoencoder, score, hparams["image_size"])
    prefix = "scorer."
    scorer.load_state_dict(
        {k[len(prefix) :]: v for k, v in content["state_dict"].items() if k.startswith(prefix)}
    )
    return scorer.to(device).eval().requires_grad_(False)  # explanations need input gradients only


def training_config(checkpoint: str | Path) -> DictConfig | None:
    """The config.yaml that `anomaly-ae train` wrote into <run>/, for a checkpoint in <run>/checkpoints/."""
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
    """`given`, else the size the checkpoint was trained at."""
    if given is not None:
        return int(given)
    return int(read_checkpoint(checkpoint)["hyper_parameters"]["image_size"])

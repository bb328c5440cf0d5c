"""Detector: a trained model as a Python API, from a checkpoint (.ckpt) or an exported file (.onnx, .pt2).

from anomaly_ae import Detector
det = Detector.load("outputs/grid/.../checkpoints/best.ckpt")   # or model.onnx, model.pt2
result = det.predict(["a.png", "b.png"])       # a path, PIL image, array, tensor, or a list of them
result.scores, result.labels, result.maps[0], result.masks[0]
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from anomaly_ae.data.images import as_float, pil_to_uint8, read_image
from anomaly_ae.inference.loading import CheckpointError, load_module, resolve_device
from anomaly_ae.optional import require

ImageLike = str | Path | Image.Image | np.ndarray | Tensor
METADATA_KEY = "anomaly_ae"  # JSON with image size, channels and thresholds, in exported files
# PIL's "L" conversion (ITU-R 601-2 luma), so arrays and files become the same grey image.
LUMA = (0.299, 0.587, 0.114)


@dataclass
class Prediction:
    """Predictions for N images; maps and masks have each input's original size (H_i, W_i)."""

    scores: Tensor  # (N,) float32 image scores
    labels: Tensor  # (N,) bool: score >= image_threshold
    maps: list[Tensor]  # N x (H_i, W_i) float32 anomaly maps, bilinear from the model's size
    masks: list[Tensor]  # N x (H_i, W_i) bool: map >= pixel_threshold
    image_threshold: float
    pixel_threshold: float

    def __len__(self) -> int:
        return len(self.scores)


def _to_chw(item: np.ndarray | Tensor) -> Tensor:
    """Array (H, W[, C]) or tensor (C, H, W) -> float32 (C, H, W) in [0, 1], scaled by its dtype."""
    if isinstance(item, np.ndarray):
        array = item[..., None] if item.ndim == 2 else item
        if array.ndim != 3:
            raise ValueError(f"a numpy image must be (H, W) or (H, W, C), got shape {item.shape}")
        if array.dtype == np.uint16:  # torch has few uint16 ops: scale here
            array = array.astype(np.float32) / 65535
        item = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)  # (C, H, W)
    if item.ndim != 3:
        raise ValueError(f"a tensor image must be (C, H, W) or (N, C, H, W), got shape {tuple(item.shape)}")
    if item.dtype == torch.uint8:
        return as_float(item)
    if item.dtype == torch.uint16:
        return item.float() / 65535
    if item.dtype == torch.bool:
        return item.float()
    if not item.is_floating_point():
        raise ValueError(f"images must be uint8, uint16 or float in [0, 1], got {item.dtype}")
    item = item.float()
    low, high = item.aminmax()
    if low < 0 or high > 1:
        raise ValueError(f"float images must be in [0, 1], got values in [{low:.4g}, {high:.4g}]")
    return item


def _convert_channels(image: Tensor, channels: int) -> Tensor:
    """(C, H, W) -> (channels, H, W): grey <-> RGB as PIL converts, alpha dropped."""
    have = image.shape[0]
    if have in (2, 4):  # LA, RGBA: alpha is not part of the picture
        image, have = image[: have - 1], have - 1
    if have == channels:
        return image
    if have == 1 and channels == 3:
        return image.expand(3, -1, -1)
    if have == 3 and channels == 1:
        weights = torch.tensor(LUMA, dtype=image.dtype, device=image.device)
        return (image * weights[:, None, None]).sum(dim=0, keepdim=True)
    raise ValueError(f"cannot map an image of {image.shape[0]} channels to the model's {channels}")


def model_input(item: ImageLike, channels: int, size: int, device: torch.device) -> tuple[Tensor, tuple]:
    """One image -> ((channels, size, size) float32 in [0, 1] on `device`, its original (H, W)).

    Files and PIL images are decoded as the training data were (8/16 bit, L/RGB, PIL bilinear resize);
    arrays and tensors are resized on the device with antialiased bilinear interpolation.
    """
    if isinstance(item, str | Path):
        image = read_image(item, channels, size)  # errors name the file
        with Image.open(item) as header:  # reads the header only
            original = (header.height, header.width)
        return as_float(image).to(device), original
    if isinstance(item, Image.Image):
        return as_float(pil_to_uint8(item, channels, size)).to(device), (item.height, item.width)
    if not isinstance(item, np.ndarray | Tensor):
        raise TypeError(f"cannot predict on a {type(item).__name__}: give a path, PIL image, array or tensor")
    image = _convert_channels(_to_chw(item).to(device), channels)
    original = tuple(image.shape[-2:])
    if original != (size, size):
        image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0]
    return image.clamp(0, 1), original


def _flatten(inputs) -> list:
    """A single image, a batch tensor/array or a list of them -> a list of single images."""
    if isinstance(inputs, Sequence) and not isinstance(inputs, str):
        return [one for item in inputs for one in _flatten(item)]
    if isinstance(inputs, Tensor) and inputs.ndim == 4:
        return list(inputs.unbind(0))
    if isinstance(inputs, np.ndarray) and inputs.ndim == 4:  # (N, H, W, C)
        return list(inputs)
    return [inputs]


class Detector:
    """Scores, labels, anomaly maps and masks for images of any size and channel mode."""

    def __init__(
        self,
        scorer: Callable[[Tensor], tuple[Tensor, Tensor]],
        in_channels: int,
        image_size: int,
        image_threshold: float,
        pixel_threshold: float,
        device: torch.device,
        source: str = "",
    ) -> None:
        self.scorer, self.in_channels, self.image_size = scorer, in_channels, image_size
        self.image_threshold, self.pixel_threshold = image_threshold, pixel_threshold
        self.device, self.source = device, source
        if math.isnan(image_threshold) or math.isnan(pixel_threshold):
            warnings.warn(
                f"{source} has no fitted thresholds (no validation ran): labels and masks are all False; "
                "set detector.image_threshold and detector.pixel_threshold",
                stacklevel=3,
            )

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> Detector:
        """From a checkpoint of `anomaly-ae train` (.ckpt) or a file of `anomaly-ae export` (.onnx, .pt2)."""
        path, device = Path(path), resolve_device(device)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if path.suffix == ".onnx":
            return cls._from_onnx(path, device)
        if path.suffix == ".pt2":
            return cls._from_pt2(path, device)
        module = load_module(path, device)
        hparams = module.hparams
        image, pixel = float(module.image_threshold), float(module.pixel_threshold)
        return cls(module.scorer, hparams.in_channels, hparams.image_size, image, pixel, device, str(path))

    @classmethod
    def _from_metadata(cls, scorer, meta: dict, device: torch.device, path: Path) -> Detector:
        return cls(
            scorer, meta["in_channels"], meta["image_size"], meta["image_threshold"],
            meta["pixel_threshold"], device, str(path),
        )  # fmt: skip

    @classmethod
    def _from_onnx(cls, path: Path, device: torch.device) -> Detector:
        onnxruntime = require("onnxruntime", "export")

        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            session = onnxruntime.InferenceSession(str(path), providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path} is not a valid ONNX model: {error}") from None
        meta = _parse_metadata(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), path)
        ran_on = torch.device("cuda") if providers[0].startswith("CUDA") else torch.device("cpu")

        def scorer(images: Tensor) -> tuple[Tensor, Tensor]:
            maps, scores = session.run(["maps", "scores"], {"images": images.cpu().numpy()})
            return torch.from_numpy(maps), torch.from_numpy(scores)

        return cls._from_metadata(scorer, meta, ran_on, path)

    @classmethod
    def _from_pt2(cls, path: Path, device: torch.device) -> Detector:
        extra = {METADATA_KEY: ""}
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as error:  # zip, JSON and schema errors each have their own type
            raise CheckpointError(f"{path} is not a .pt2 file of `anomaly-ae export`: {error}") from None
        meta = _parse_metadata(extra[METADATA_KEY] or None, path)
        return cls._from_metadata(program.module().to(device), meta, device, path)

    @torch.inference_mode()
    def predict(self, inputs, batch_size: int = 32) -> Prediction:
        """Images (path, PIL, array (H, W[, C]), tensor (C, H, W) / (N, C, H, W), or a list) -> Prediction."""
        items = _flatten(inputs)
        if not items:
            raise ValueError("predict() got no image")
        scores, maps = [], []
        for start in range(0, len(items), batch_size):
            batch = [
                model_input(item, self.in_channels, self.image_size, self.device)
                for item in items[start : start + batch_size]
            ]
            chunk_maps, chunk_scores = self.scorer(torch.stack([image for image, _ in batch]))
            scores.append(chunk_scores.float().cpu())
            for amap, (_, original) in zip(chunk_maps.float(), batch, strict=True):
                if tuple(amap.shape) != original:  # back to the input's size, as test maps are
                    amap = F.interpolate(amap[None, None], size=original, mode="bilinear")[0, 0]
                maps.append(amap.cpu())
        scores = torch.cat(scores)
        return Prediction(
            scores=scores,
            labels=scores >= self.image_threshold,
            maps=maps,
            masks=[amap >= self.pixel_threshold for amap in maps],
            image_threshold=self.image_threshold,
            pixel_threshold=self.pixel_threshold,
        )

    def __repr__(self) -> str:
        return (
            f"Detector({self.source!r}, {self.in_channels} channel(s) at {self.image_size}px, "
            f"image_threshold={self.image_threshold:.4g}, pixel_threshold={self.pixel_threshold:.4g}, "
            f"device={self.device})"
        )


def _parse_metadata(text: str | bytes | None, path: Path) -> dict:
    if not text:
        raise CheckpointError(
            f"{path} has no {METADATA_KEY!r} metadata: it was not written by `anomaly-ae export`"
        )
    meta = json.loads(text)
    missing = [
        key for key in ("image_size", "in_channels", "image_threshold", "pixel_threshold") if key not in meta
    ]
    if missing:
        raise CheckpointError(f"{path} metadata lacks {', '.join(missing)}: re-export it with this version")
    return meta

"""Decoding image and mask files into uint8 tensors, for every mode and bit depth the sources use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
# 16-bit grey: PIL reads 16-bit PNG and TIFF as I;16 (or I, depending on version and byte order)
_WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def mode_channels(mode: str) -> int:
    """1 for grey PIL modes (any bit depth), 3 for everything else (RGB, RGBA, palette, CMYK)."""
    return 1 if mode in GREY_MODES else 3


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and float grey images -> 8-bit 'L' with one fixed scale for every file.

    Never rescaled per image: stretching each file to its own maximum would hide exactly the
    too-dark or too-bright parts that are defects.
    """
    if image.mode in _WIDE_MODES:
        array = np.asarray(image, dtype=np.float32) / 257.0  # 65535 -> 255
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float32) * 255.0  # float images are conventionally in [0, 1]
    else:
        return image
    return Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))


def pil_to_uint8(image: Image.Image, channels: int, size: int | None) -> Tensor:
    """PIL image (any mode, 8 or 16 bit) -> (channels, size, size) uint8 tensor."""
    image = to_8bit(image).convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)
    return torch.from_numpy(array.copy())


def read_image(path: str | Path, channels: int, size: int | None) -> Tensor:
    """Decode an image file into a (channels, size, size) uint8 tensor; errors name the file."""
    try:
        with Image.open(path) as image:
            image.load()  # full decode: a truncated file fails here, not later
            return pil_to_uint8(image, channels, size)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise OSError(f"cannot read image {path}: {error}. Replace or delete the file.") from error


def mask_values(image: Image.Image) -> np.ndarray:
    """(H, W) raw mask values: grey levels or palette indices; colour masks give their brightest channel."""
    if image.mode in ("1", "L", "P", "F") or image.mode in _WIDE_MODES:
        return np.asarray(image)
    if image.mode in ("LA", "PA"):
        return np.asarray(image.getchannel(0))
    # max, not luminance: a label map coded in pure blue (0, 0, 1) has luminance 0
    return np.asarray(image.convert("RGB")).max(axis=2)


def distinct_values(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values of a mask; bincount is ~10x faster than np.unique on uint8."""
    if values.dtype == np.uint8:
        return np.flatnonzero(np.bincount(values.ravel(), minlength=256))
    return np.unique(values)


def is_binary(values: np.ndarray) -> bool:
    """True for masks with one value, or two of which one is 0 (0/255, 0/1, 0/65535, two palette entries)."""
    found = distinct_values(values)
    return len(found) <= 1 or (len(found) == 2 and found[0] == 0)


def mask_to_tensor(values: np.ndarray, size: int | None) -> Tensor:
    """(H, W) raw values -> (1, size, size) uint8 of 0/1 (non-zero is defect); nearest resize stays binary."""
    image = Image.fromarray((values > 0).astype(np.uint8) * 255)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.NEAREST)
    return torch.from_numpy((np.asarray(image) > 0)[None].astype(np.uint8))


def read_mask(path: str | Path, size: int | None) -> Tensor:
    """Decode a mask file into a (1, size, size) uint8 tensor of 0/1; errors name the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return mask_to_tensor(mask_values(image), size)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise OSError(f"cannot read mask {path}: {error}. Replace or delete the file.") from error


def as_float(images: Tensor) -> Tensor:
    """uint8 [0, 255] or float images -> float32 in [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    return images.float()

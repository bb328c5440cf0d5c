"""What every data source shares: samples, image decoding, the dataset and the datamodule skeleton."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class Sample:
    """One image: where it is, whether it is anomalous, and where its mask is (None: no mask)."""

    path: str
    label: int  # 0 normal, 1 anomalous
    defect_type: str = "good"
    mask_path: str | None = None


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path: str | Path, channels: int, size: int | None) -> Tensor:
    """Decode an image file into a (channels, size, size) uint8 tensor; errors name the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return pil_to_uint8(image, channels, size)
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise OSError(f"cannot read image {path}: {error}. Replace or delete the file.") from error


def pil_to_uint8(image: Image.Image, channels: int, size: int | None) -> Tensor:
    """PIL image (any mode, 8 or 16 bit) -> (channels, size, size) uint8 tensor."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16-bit grey: rescale, do not clip
        array = np.asarray(image, dtype=np.float32)
        image = Image.fromarray((array / max(float(array.max()), 1.0) * 255).astype(np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)  # (C, H, W)
    return torch.from_numpy(array.copy())


def read_mask(path: str | Path, size: int | None) -> Tensor:
    """Decode a mask file into a (1, size, size) uint8 tensor of 0/1; nearest resize keeps it binary."""
    try:
        with Image.open(path) as image:
            image = image.convert("L")
            if size is not None and image.size != (size, size):
                image = image.resize((size, size), Image.NEAREST)
            array = np.asarray(image) > 127
    except (OSError, UnidentifiedImageError) as error:
        raise OSError(f"cannot read mask {path}: {error}. Replace or delete the file.") from error
    return torch.from_numpy(array[None].astype(np.uint8))


def image_channels(path: str | Path) -> int:
    """1 for grayscale files, 3 otherwise."""
    with Image.open(path) as image:
        return 1 if image.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else 3


class ImageDataset(Dataset):
    """Items: {image (C, S, S) uint8, mask (1, S, S) uint8, label, defect_type, path}.

    Images are decoded from `samples[i].path`, or taken from `images` when the source keeps
    them in memory. Augmentation and corruption happen later, on the device.
    """

    def __init__(
        self, samples: Sequence[Sample], channels: int, size: int, images: Tensor | None = None
    ) -> None:
        self.samples, self.channels, self.size, self.images = list(samples), channels, size, images

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        if self.images is not None:
            image = self.images[index]
        else:
            image = read_image(sample.path, self.channels, self.size)
        if sample.mask_path is not None:
            mask = read_mask(sample.mask_path, self.size)
        else:  # normal images are all-zero; unlabeled anomalies too (has_masks says whether they count)
            mask = torch.zeros(1, self.size, self.size, dtype=torch.uint8)
        return {
            "image": image,
            "mask": mask,
            "label": sample.label,
            "defect_type": sample.defect_type,
            "path": sample.path,
        }


def split_normals(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded split of normal samples into (kept, held_out) with round(fraction * n) held out."""
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = round(fraction * len(samples))
    held = sorted(order[:n_held])
    kept = sorted(order[n_held:])
    return [samples[i] for i in kept], [samples[i] for i in held]


class AnomalyDataModule(L.LightningDataModule):
    """Train on normal images, validate on a held-out share of them, test on the labelled test split.

    Subclasses implement `load()` -> (train samples, test samples, channels, in-memory images or None).
    """

    has_masks = True  # whether test masks are ground truth (pixel metrics are then meaningful)

    def __init__(
        self,
        image_size: int = 256,
        batch_size: int = 16,
        eval_batch_size: int = 32,
        num_workers: int = 2,
        pin_memory: bool = False,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        augment: dict | None = None,
    ) -> None:
        super().__init__()
        # Which flips/rotations keep an image normal is a property of the data; the module applies them.
        self.augment = dict(augment or {"hflip": False, "vflip": False, "rot90": False})
        self.image_size, self.batch_size, self.eval_batch_size = image_size, batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.channels: int | None = None
        self.train_set = self.val_set = self.test_set = None

    def load(self) -> tuple[list[Sample], list[Sample], int, dict[str, Tensor] | None]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, test, self.channels, memory = self.load()
        fit, val = split_normals(train, self.val_fraction, self.split_seed)
        if len(fit) < self.batch_size:
            raise ValueError(
                f"only {len(fit)} training images after holding out {len(val)} for validation, fewer than "
                f"data.batch_size={self.batch_size}: lower data.batch_size or data.val_fraction"
            )
        images = memory or {}
        self.train_set = self._dataset(fit, images.get("train"), train)
        self.val_set = self._dataset(val, images.get("train"), train)
        self.test_set = self._dataset(test, images.get("test"), test)

    def _dataset(self, subset: list[Sample], images: Tensor | None, full: list[Sample]) -> ImageDataset:
        if images is not None:  # in-memory sources: pick the rows of this subset
            position = {sample.path: i for i, sample in enumerate(full)}
            images = images[[position[s.path] for s in subset]]
        return ImageDataset(subset, self.channels, self.image_size, images)

    def _loader(self, dataset: ImageDataset, train: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,  # a last batch of one image would break batch norm
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, train=False)

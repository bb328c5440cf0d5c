"""Batches drawn by index from a cached split kept on the training device: no workers, no copy per step.

A cached category is small next to GPU memory (MVTec AD's largest: ~400 images, ~80 MB as 256x256x3
uint8), so the decoded uint8 tensor can live on the device and a batch is one `index_select` there. The
order comes from the very sampler the DataLoader would use (the (seed, epoch) DistributedSampler of
training, each process's share in evaluation), so batches, resume and DDP shares are those of the
DataLoader path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import SequentialSampler

if TYPE_CHECKING:
    from anomaly_ae.data.base import ImageDataset

log = logging.getLogger(__name__)
MODES = ("auto", "true", "false")


def resident_mode(value: bool | str) -> str:
    """data.resident as one of MODES (YAML gives booleans for true/false)."""
    mode = str(value).lower()
    if mode not in MODES:
        raise ValueError(f"data.resident={value!r} is not one of auto, true, false")
    return mode


def split_bytes(dataset: ImageDataset, masks: Tensor | None) -> int:
    """Bytes the split takes on the device: its images, plus its masks when it has any."""
    images = dataset.images
    return images.numel() * images.element_size() + (0 if masks is None else masks.numel())


def stacked_masks(dataset: ImageDataset) -> Tensor | None:
    """The split's masks as one (N, 1, H, W) uint8 tensor; None when it has none to keep.

    eval.resolution=mask keeps each mask at its file's size: these are decoded here, once, and stacked
    when they share one size (None otherwise, so the DataLoader serves them one by one).
    """
    if not dataset.original_masks:
        return dataset.masks
    from anomaly_ae.data.base import original_size_mask  # base imports this module

    masks = [original_size_mask(sample) for sample in dataset.samples]
    if len({tuple(mask.shape) for mask in masks}) > 1:
        return None
    return torch.stack(masks)


def resident_device(
    mode: str, device: torch.device, dataset: ImageDataset, masks: Tensor | None, max_mb: float, split: str
) -> torch.device | None:
    """The device to keep `dataset` on, or None for the DataLoader.

    auto: on accelerators only (on a CPU the DataLoader path stays as it was), when the split is cached
    and fits `max_mb`; true: on any device, CPU included, under the same conditions (else a warning).
    """
    if mode == "false" or (mode == "auto" and device.type == "cpu"):
        return None
    why = None
    if dataset.images is None:
        why = "it is not cached (data.cache=false)"
    elif dataset.original_masks and masks is None:
        why = "its ground-truth masks differ in size (eval.resolution=mask)"
    elif split_bytes(dataset, masks) > max_mb * 2**20:
        why = f"it takes {split_bytes(dataset, masks) / 2**20:.0f} MB, over data.resident_max_mb={max_mb}"
    if why is not None:
        if mode == "true":
            rank_zero_warn(f"data.resident=true: the {split} split stays on the DataLoader because {why}")
        return None
    return device


class ResidentLoader:
    """Iterates as DataLoader(dataset, batch_size, sampler=sampler, drop_last=drop_last) with the default
    collate would, with the split's tensors on `device`.

    Lightning calls `sampler.set_epoch` on it as on a DataLoader (it looks for `.sampler`), and reads
    `.dataset` as callbacks do (`trainer.val_dataloaders.dataset`).
    """

    batch_sampler = None  # Lightning's DataLoader checks read it: the order is `sampler`'s alone

    def __init__(
        self, dataset: ImageDataset, batch_size: int, sampler, drop_last: bool, device: torch.device,
        masks: Tensor | None,
    ) -> None:  # fmt: skip
        self.dataset, self.batch_size, self.drop_last = dataset, batch_size, drop_last
        self.sampler = sampler if sampler is not None else SequentialSampler(dataset)
        self.device = device
        self.images = dataset.images.to(device)  # (N, C, S, S) uint8
        self.masks = None if masks is None else masks.to(device)  # (N, 1, H, W) uint8; None: all zeros
        self.labels = torch.tensor([s.label for s in dataset.samples], dtype=torch.long).to(device)
        log.info(
            "%d images (%.1f MB) kept on %s, drawn by index", len(dataset),
            split_bytes(dataset, masks) / 2**20, device,
        )  # fmt: skip
        self._zero_mask_shape = (1, dataset.size, dataset.size)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        order = torch.tensor(list(self.sampler), dtype=torch.long)  # this epoch's order, this process's share
        on_device = order.to(self.device)  # one small copy per epoch, none per step
        samples = self.dataset.samples
        for index in range(len(self)):
            rows = on_device[index * self.batch_size : (index + 1) * self.batch_size]
            listed = order[index * self.batch_size : (index + 1) * self.batch_size].tolist()
            if self.masks is None:
                masks = torch.zeros(
                    len(listed), *self._zero_mask_shape, dtype=torch.uint8, device=self.device
                )
            else:
                masks = self.masks.index_select(0, rows)
            yield {
                "image": self.images.index_select(0, rows),
                "mask": masks,
                "label": self.labels.index_select(0, rows),
                "defect_type": [samples[i].defect_type for i in listed],
                "path": [samples[i].path for i in listed],
            }

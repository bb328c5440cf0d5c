"""What every data source shares: samples, listings, the dataset and the datamodule skeleton."""

from __future__ import annotations

import os
from collections.abc import Sequence

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from anomaly_ae.data.check import Checked, NotEnoughData, check_listing
from anomaly_ae.data.images import pil_to_uint8, read_image, read_mask
from anomaly_ae.data.listing import Listing, Sample
from anomaly_ae.data.resident import ResidentLoader, resident_device, resident_mode, stacked_masks


class ImageDataset(Dataset):
    """Items: {image (C, S, S) uint8, mask (1, S, S) uint8, label, defect_type, path}.

    Images and masks are decoded from the files, or taken from `images` / `masks` when the source
    keeps them in memory. Augmentation and corruption happen later, on the device.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        channels: int,
        size: int,
        images: Tensor | None = None,
        masks: Tensor | None = None,
        original_masks: bool = False,
    ) -> None:
        self.samples, self.channels, self.size = list(samples), channels, size
        self.images, self.masks, self.original_masks = images, masks, original_masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        if self.images is not None:
            image = self.images[index]
        else:
            image = read_image(sample.path, self.channels, self.size)
        if self.original_masks:  # eval.resolution=mask: ground truth at the file's own size
            mask = original_size_mask(sample)
        elif self.masks is not None:
            mask = self.masks[index]
        elif sample.mask_path is not None:
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


def original_size_mask(sample: Sample) -> Tensor:
    """The sample's mask at its original size; zeros of the image's size when it has no mask file."""
    if sample.mask_path is not None:
        return read_mask(sample.mask_path, None)
    with Image.open(sample.path) as image:  # reads the header only
        width, height = image.size
    return torch.zeros(1, height, width, dtype=torch.uint8)


def split_normals(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Seeded split of normal samples into (kept, held_out) with round(fraction * n) held out."""
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = round(fraction * len(samples))
    held = sorted(order[:n_held])
    kept = sorted(order[n_held:])
    return [samples[i] for i in kept], [samples[i] for i in held]


class AnomalyDataModule(L.LightningDataModule):
    """Train on normal images, validate on a held-out share of them, test on the labelled test split.

    Subclasses implement `load()` -> Listing, and `fetch()` when the data can be downloaded.
    `setup` checks every file (see `anomaly_ae.data.check`) before any training starts.

    Args:
        channels: 1 or 3; None picks 3 when any image is in colour, else 1.
        cache: decode and resize every image once at setup and serve them from memory.
        resident: auto, true or false: keep each cached split on the training device and draw batches
            there by index (`anomaly_ae.data.resident`); auto does so on accelerators only.
        resident_max_mb: the largest split (images and masks) kept on the device.
        resident_eval_batch_size: evaluation batches of a resident split (None: eval_batch_size).
    """

    has_masks = True  # whether test masks are ground truth (pixel metrics are then meaningful)
    label_masks = False  # masks are label maps (any non-zero value is a defect): not checked for 0/255

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
        channels: int | None = None,
        cache: bool = False,
        progress: bool = True,
        eval_resolution: str = "model",
        resident: bool | str = "auto",
        resident_max_mb: float = 2048,
        resident_eval_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        if channels not in (None, 1, 3):
            raise ValueError(f"data.channels={channels!r} is not one of null, 1, 3")
        # Which flips/rotations keep an image normal is a property of the data; the module applies them.
        self.augment = dict(augment or {"hflip": False, "vflip": False, "rot90": False})
        self.image_size, self.batch_size, self.eval_batch_size = image_size, batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.fixed_channels, self.cache, self.progress = channels, cache, progress
        if eval_resolution not in ("mask", "model"):
            raise ValueError(f"eval.resolution={eval_resolution!r} is not one of 'mask', 'model'")
        self.eval_resolution = eval_resolution
        self.resident, self.resident_max_mb = resident_mode(resident), resident_max_mb
        self.resident_eval_batch_size = resident_eval_batch_size
        self.channels: int | None = None
        self.train_set = self.val_set = self.test_set = None

    @property
    def where(self) -> str:
        """The data in words, for messages: source, category and folder."""
        return type(self).__name__

    def fetch(self) -> None:
        """Make sure the data is on disk: download it when configured, else explain how to get it."""

    def load(self) -> Listing:
        raise NotImplementedError

    def cache_image(self, image: Image.Image, channels: int) -> Tensor:
        """A decoded file -> the (channels, S, S) uint8 tensor kept in memory; same pixels as read_image."""
        return pil_to_uint8(image, channels, self.image_size)

    def listing(self) -> Listing:
        """Fetch (if configured) and list the data, with the problems found while listing."""
        self.fetch()
        return self.load()

    def check(self, listing: Listing, cache: bool = False) -> Checked:
        """Decode every file of the listing (kept in memory if `cache`); raise DataError on problems."""
        return check_listing(
            listing,
            where=self.where,
            channels=self.fixed_channels,
            cache_size=self.image_size,
            cache_image=self.cache_image if cache else None,
            label_masks=self.label_masks,
            progress=self.progress,
        )

    def prepare_data(self) -> None:
        # Lightning calls this on one process per node; setup fetches too (a no-op once complete) because
        # run.py calls setup before the Trainer exists, and the download is file-locked for other ranks.
        self.fetch()

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        listing = self.listing()
        if listing.val is None:
            fit, val = split_normals(listing.train, self.val_fraction, self.split_seed)
        else:
            fit, val = listing.train, listing.val
        if not listing.problems:  # from the listing alone, before any file is decoded
            self._check_counts(fit, val, stage)
        checked = self.check(listing, cache=self.cache)  # raises DataError listing every problem
        self._check_counts(fit, val, stage)
        self.channels = checked.channels
        row = {sample.path: i for i, sample in enumerate(listing.samples())}
        self.train_set, self.val_set, self.test_set = (
            self._dataset(subset, checked.images, checked.masks, row) for subset in (fit, val, listing.test)
        )
        self.test_set.original_masks = self.has_masks and self.eval_resolution == "mask"

    def _check_counts(self, fit: list[Sample], val: list[Sample], stage: str | None) -> None:
        """Refuse splits that cannot train, select a checkpoint or fit thresholds (testing needs neither)."""
        if not val and stage != "test":
            raise NotEnoughData(
                f"no validation images in {self.where}: {len(fit)} training images with "
                f"data.val_fraction={self.val_fraction} hold none out, and validation selects the checkpoint "
                "and fits the thresholds; add training images or raise data.val_fraction"
            )
        if len(fit) < self.batch_size:
            raise NotEnoughData(
                f"only {len(fit)} training images in {self.where} after holding out {len(val)} for "
                f"validation, fewer than data.batch_size={self.batch_size}: lower data.batch_size or "
                "data.val_fraction"
            )

    def _dataset(
        self, subset: list[Sample], images: Tensor | None, masks: Tensor | None, row: dict[str, int]
    ) -> ImageDataset:
        if images is not None:  # cached: copy this subset's rows now, before DataLoader workers fork
            rows = torch.tensor([row[s.path] for s in subset], dtype=torch.long)
            images = images[rows]
            # Subsets without masks (train, val) get zeros on the fly rather than a tensor of zeros.
            masks = masks[rows] if any(s.mask_path for s in subset) else None
        return ImageDataset(subset, self.channels, self.image_size, images, masks)

    def _loader(self, dataset: ImageDataset, train: bool, split: str) -> DataLoader | ResidentLoader:
        sampler = self._sampler(dataset, train)
        batch_size = self.batch_size if train else self.eval_batch_size  # per process under DDP
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.resident != "false" and (self.resident == "true" or device.type != "cpu"):
            masks = stacked_masks(dataset) if dataset.images is not None else None
            if resident_device(self.resident, device, dataset, masks, self.resident_max_mb, split):
                if not train and self.resident_eval_batch_size:
                    batch_size = self.resident_eval_batch_size
                return ResidentLoader(dataset, batch_size, sampler, train, device, masks)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=train,  # a last batch of one image would break batch norm
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def _sampler(self, dataset: ImageDataset, train: bool) -> DistributedSampler | None:
        """Each process's share of the images; Lightning keeps these, as they are DistributedSamplers.

        Training: a shuffle that depends only on (seed, epoch), also in one process, so a resumed run
        sees the batches an uninterrupted one would. Evaluation: every image exactly once across the
        processes; Lightning's own DistributedSampler pads with repeats, which would skew the metrics.
        """
        trainer = self.trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        if train:
            # PL_GLOBAL_SEED: the seed_everything seed, which Lightning's own DistributedSampler uses too.
            seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
            return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        if world == 1:
            return None
        if len(dataset) < world:  # DDP syncs buffers on each process's first batch: every one needs one
            raise ValueError(
                f"{len(dataset)} evaluation images for {world} processes: every process needs at least one; "
                "use fewer trainer.devices, or a larger data.val_fraction when validation is this small"
            )
        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)

    def train_dataloader(self) -> DataLoader | ResidentLoader:
        return self._loader(self.train_set, train=True, split="training")

    def val_dataloader(self) -> DataLoader | ResidentLoader:
        return self._loader(self.val_set, train=False, split="validation")

    def test_dataloader(self) -> DataLoader | ResidentLoader:
        return self._loader(self.test_set, train=False, split="test")

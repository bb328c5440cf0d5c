"""Check a dataset before training: decode every file, collect every problem, count what is there.

`anomaly-ae check data=mvtec data.root=/data/mvtec_anomaly_detection category=grid` runs it on its own.
The same check runs in `AnomalyDataModule.setup`, so a bad file stops a run before its first step,
never in the middle of an epoch.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from PIL import Image, UnidentifiedImageError
from rich import progress as rp
from rich.table import Table
from torch import Tensor

from anomaly_ae.data.images import distinct_values, is_binary, mask_to_tensor, mask_values, mode_channels
from anomaly_ae.data.listing import Listing, Problem, Sample

PROGRESS_FROM = 100  # files; smaller checks finish before a bar would help
# PIL signals damaged files with any of these (SyntaxError and EOFError from some format plugins).
_DECODE_ERRORS = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    EOFError,
    Image.DecompressionBombError,
)


class DataError(ValueError):
    """The data has problems; the message lists every one with its file."""

    def __init__(self, where: str, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        one = len(problems) == 1
        count, them = (f"{len(problems)} problem", "it") if one else (f"{len(problems)} problems", "them")
        lines = "".join(f"\n  - {problem}" for problem in problems)
        super().__init__(f"{count} in {where}, found before training; fix {them} and run again:{lines}")


class NotEnoughData(ValueError):
    """Too few images for the configured split or batch size; the message names the setting to change."""


@dataclass
class Checked:
    """What the check learned: the channel count and, when caching, every image and mask in memory."""

    channels: int
    images: Tensor | None  # (N, C, S, S) uint8, rows in Listing.samples() order
    masks: Tensor | None  # (N, 1, S, S) uint8 of 0/1


def _open_error(path: str, error: Exception, what: str = "image") -> Problem:
    """The problem for a file that cannot be opened or fully decoded."""
    if isinstance(error, FileNotFoundError):
        return Problem(path, f"{what} file is missing")
    if isinstance(error, UnidentifiedImageError):
        return Problem(path, f"not a readable {what} file (unknown or damaged format); replace or delete it")
    return Problem(path, f"{what} cannot be decoded ({error}); replace or delete it")


def _mode(path: str) -> str | Problem:
    """The file's PIL mode from its header alone (no pixel decoding), or the problem opening it."""
    try:
        with Image.open(path) as image:
            return image.mode
    except _DECODE_ERRORS as error:
        return _open_error(path, error)


def choose_channels(modes: Counter[str], channels: int | None, where: str) -> int:
    """The configured channel count, else 3 when any image is in colour; warns once about mixed modes."""
    if channels is None:
        channels = 3 if any(mode_channels(mode) == 3 for mode in modes) else 1
    if len(modes) > 1:
        found = ", ".join(f"{count} {mode}" for mode, count in sorted(modes.items()))
        target = "RGB" if channels == 3 else "grayscale (L)"
        warnings.warn(
            f"{where}: images come in mixed modes ({found}); all are converted to {target} "
            f"(data.channels={channels})",
            UserWarning,
            stacklevel=3,
        )
    return channels


def _inspect(
    sample: Sample,
    channels: int,
    cache_size: int | None,
    cache_image: Callable[[Image.Image, int], Tensor] | None,
    label_masks: bool,
) -> tuple[Tensor | None, Tensor | None, list[Problem]]:
    """Fully decode one image and its mask; return what to cache and the problems found."""
    image_tensor = mask_tensor = None
    try:
        with Image.open(sample.path) as image:
            image.load()  # every byte: a truncated file fails here, not in the middle of an epoch
            size = image.size
            if cache_image is not None:
                image_tensor = cache_image(image, channels)
    except _DECODE_ERRORS as error:
        return None, None, [_open_error(sample.path, error)]
    if sample.mask_path is None:
        return image_tensor, None, []
    try:
        with Image.open(sample.mask_path) as mask:
            mask.load()
            values = mask_values(mask)
    except _DECODE_ERRORS as error:
        return image_tensor, None, [_open_error(sample.mask_path, error, "mask")]
    if values.shape[::-1] != size:
        (w, h), (mw, mh) = size, values.shape[::-1]
        message = f"mask is {mw}x{mh} pixels but its image {sample.path} is {w}x{h}"
        return image_tensor, None, [Problem(sample.mask_path, message)]
    if not label_masks and not is_binary(values):
        found = distinct_values(values)
        shown = ", ".join(str(v) for v in found[:6]) + (", ..." if len(found) > 6 else "")
        message = (
            f"mask is not binary: {len(found)} distinct values ({shown}); save it with only 0 (normal) "
            "and 255 (defect), as PNG (JPEG compression adds values)"
        )
        return image_tensor, None, [Problem(sample.mask_path, message)]
    if cache_image is not None:
        mask_tensor = mask_to_tensor(values, cache_size)
    return image_tensor, mask_tensor, []


def check_listing(
    listing: Listing,
    *,
    where: str,
    channels: int | None = None,
    cache_size: int | None = None,
    cache_image: Callable[[Image.Image, int], Tensor] | None = None,
    label_masks: bool = False,
    progress: bool = True,
) -> Checked:
    """Decode every image and mask of a listing; raise DataError naming every problem, else return Checked.

    Args:
        cache_size / cache_image: when cache_image is given, keep its result for every image, and the
            masks resized to cache_size, as tensors in memory.
        label_masks: masks are label maps (any non-zero value is a defect), so not checked for 0/255.
    """
    samples = listing.samples()
    problems = list(listing.problems) + listing.overlap_problems()
    modes: Counter[str] = Counter()
    readable = []
    for index, sample in enumerate(samples):
        mode = _mode(sample.path)
        if isinstance(mode, Problem):
            problems.append(mode)
        else:
            modes[mode] += 1
            readable.append(index)
    channels = choose_channels(modes, channels, where)
    images = masks = None
    if cache_image is not None:
        images = torch.zeros(len(samples), channels, cache_size, cache_size, dtype=torch.uint8)
        masks = torch.zeros(len(samples), 1, cache_size, cache_size, dtype=torch.uint8)

    def inspect(index: int) -> tuple[int, tuple[Tensor | None, Tensor | None, list[Problem]]]:
        return index, _inspect(samples[index], channels, cache_size, cache_image, label_masks)

    columns = (rp.TextColumn("{task.description}"), rp.BarColumn(), rp.MofNCompleteColumn())
    show = progress and len(readable) >= PROGRESS_FROM
    # PIL decodes and resizes without the GIL, so threads scale with cores and share the cache tensors.
    with (
        ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool,
        rp.Progress(*columns, rp.TimeElapsedColumn(), disable=not show) as bar,
    ):
        task = bar.add_task(f"{'caching' if images is not None else 'checking'} images", total=len(readable))
        for index, (image, mask, found) in pool.map(inspect, readable):  # in order: problems stay sorted
            problems += found
            if image is not None:
                images[index] = image
            if mask is not None:
                masks[index] = mask
            bar.advance(task)
    if problems:
        raise DataError(where, problems)
    return Checked(channels, images, masks)


def count_table(listing: Listing, title: str) -> Table:
    """Images and masks per split and defect type, as a rich table."""
    table = Table(title=title)
    for name in ("split", "defect type"):
        table.add_column(name)
    for name in ("images", "masks"):
        table.add_column(name, justify="right")
    for split, samples in listing.splits().items():
        images = Counter(s.defect_type for s in samples)  # first-seen order: good first in MVTec layouts
        masks = Counter(s.defect_type for s in samples if s.mask_path is not None)
        for defect_type, count in images.items():
            table.add_row(split, defect_type, str(count), str(masks[defect_type]))
    samples = listing.samples()
    masked = sum(s.mask_path is not None for s in samples)
    table.add_row("all", "", str(len(samples)), str(masked), style="bold")
    return table

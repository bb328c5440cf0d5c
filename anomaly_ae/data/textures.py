"""Embedded pixel-level demo datasets: MVTec-AD-shaped texture categories cut from real material photos.

`data=textures`: photos shipped inside scikit-image's `skimage/data` (512x512 8-bit grayscale; licences as
stated in the `skimage.data` docstrings, all allow redistribution and any use):
- brick:  `skimage.data.brick`,  from CC0Textures "Bricks25" (cc0textures.com), Creative Commons CC0.
- grass:  `skimage.data.grass`,  from DeviantArt "Grass-01" by linolafett, Creative Commons CC0.
- gravel: `skimage.data.gravel`, from CC0Textures "Gravel04" (cc0textures.com), Creative Commons CC0.

`data=materials`: material photos shipped in the robosuite 1.5.2 wheel on PyPI (MIT licence, the package's
only licence; `robosuite/models/assets/textures/`), read from its folder without importing the package
(which needs MuJoCo): `pip install --no-deps robosuite==1.5.2` (157 MB) is all it takes. Each file is
pinned by sha256, so every build cuts the same pixels:
- felt:    `gray-felt.png`,     854 px, grayscale (its three channels are equal: kept 1-channel).
- parquet: `wood-tiles.png`,    800 px, colour: oak blocks in alternating directions, dark joints.
- plaster: `white-plaster.png`, 1000 px, grayscale: low-contrast textured wall paint.
- wall:    `white-bricks.png`,  1100 px, colour: painted brick wall.

Split: train crops come from the top rows of the photo, all test crops (good and defect bases) from the
bottom `max(size, 30 %)` rows; no crop straddles the boundary (see `crop_plan`). A 512 px photo holds few
disjoint 256 px crops, so crops inside one region overlap (random positions) and each gets a seeded random
horizontal/vertical flip; no rotations, because brick joints have an orientation. Grayscale stays 1-channel.
Defects (scratch, stain, crack, hole, smudge, misoriented, particles) come from `anomaly_ae.data.defects`,
independent of the training corruption, one `test/<family>/` folder each so every family is scored on its
own; masks are 0/255 and mark exactly the changed pixels.

Other real material was looked for and not found under a licence that fits at >= 256 px: GIMP's
pattern sets (Debian `gimp-data`, `gimp-data-extras`: tiles of 64-256 px, GPL), Sweet Home 3D's textures
(Debian `sweethome3d`: 256 px tiles, GPL-2+), game texture packages (`ufoai-textures`, `nexuiz-textures`,
`openarena-081-textures`: GPL, not inspected further), scikit-image's other shipped photos (`moon`: no licence
stated; `immunohistochemistry`: tissue, "no known copyright restrictions").

Layout under `root/<category>/`: train/good/NNN.png, test/good/NNN.png, test/<defect>/NNN.png,
ground_truth/<defect>/NNN_mask.png, and `.complete` (written last; holds the build parameters).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from anomaly_ae.data.defects import DEFECTS
from anomaly_ae.data.download import DownloadError, file_sha256
from anomaly_ae.data.mvtec import MVTecDataModule
from anomaly_ae.optional import MissingExtra, require

TEXTURES: dict[str, str] = {"brick": "brick", "grass": "grass", "gravel": "gravel"}  # skimage.data names
MATERIALS: dict[str, tuple[str, str]] = {  # file in robosuite/models/assets/textures, its sha256
    "felt": ("gray-felt.png", "04c1b483f04be0bd3d26a42ca530c05244cf4b52c0ccb027dbb8fc2bee41ca05"),
    "parquet": ("wood-tiles.png", "18d87069529422d832559ce969858576dd46f83efc3dfd9e5ffbf26d740be123"),
    "plaster": ("white-plaster.png", "a35c03edcef74c940400dd39e2384d05169d1d15ac247166b3b7a930acd70f03"),
    "wall": ("white-bricks.png", "864e2bfb462939212c4141a060eb4c3f34c891b6909873797b08f8c4185433d1"),
}
MATERIALS_PACKAGE = "robosuite==1.5.2"
DEFECT_TYPES: tuple[str, ...] = tuple(DEFECTS)
MARKER = ".complete"
_VERSION = 2  # bump whenever the generated pixels change, so cached trees are rebuilt (2: 3 new families)
_TEST_FRACTION = 0.3


class Crop(NamedTuple):
    """A square crop of the source photo; flip bit 0 = horizontal, bit 1 = vertical."""

    top: int
    left: int
    size: int
    flip: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right), bottom/right exclusive."""
        return self.top, self.left, self.top + self.size, self.left + self.size


def load_photo(category: str) -> np.ndarray:
    """Source photo of a category as (H, W, C) uint8; C is 1 when the photo has no colour."""
    if category in TEXTURES:
        # Imported here: only this demo needs it, and it is slow to import.
        photos = require("skimage.data", "demo")
        photo = np.asarray(getattr(photos, TEXTURES[category])())
    elif category in MATERIALS:
        photo = np.asarray(Image.open(material_path(category)).convert("RGB"))
    else:
        raise ValueError(f"unknown texture category {category!r}; choose from {sorted(TEXTURES | MATERIALS)}")
    if photo.ndim == 2:
        return photo[..., None]
    photo = photo[..., :3]
    grey = (photo[..., :1] == photo).all()
    return np.ascontiguousarray(photo[..., :1]) if grey else photo


def material_path(category: str) -> Path:
    """The robosuite file of a `data=materials` category, found without importing robosuite; hash checked."""
    name, digest = MATERIALS[category]
    # find_spec of a top-level package locates it without running its __init__ (which imports MuJoCo).
    spec = importlib.util.find_spec("robosuite")
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(
            f"robosuite is not installed; data=materials cuts its categories from the material photos in "
            f"its wheel: pip install --no-deps '{MATERIALS_PACKAGE}'"
        )
    path = Path(spec.submodule_search_locations[0]) / "models" / "assets" / "textures" / name
    if not path.is_file() or file_sha256(path) != digest:
        raise DownloadError(  # a source that fails its checksum, as for the downloaded data sets
            f"{path} is missing or not the photo of {MATERIALS_PACKAGE}; "
            f"reinstall it: pip install --no-deps --force-reinstall '{MATERIALS_PACKAGE}'"
        )
    return path


def split_row(height: int, size: int) -> int:
    """First row of the test region; rows above it are the train region."""
    boundary = height - max(size, int(np.ceil(_TEST_FRACTION * height)))
    if boundary < size:
        raise ValueError(f"photo of height {height} cannot hold disjoint train and test crops of {size} px")
    return boundary


def _rng(seed: int, category: str, stream: int) -> np.random.Generator:
    """Independent generator per (seed, category, stream); crc32 because hash() is salted per process."""
    return np.random.default_rng([seed, zlib.crc32(category.encode()), stream])


def crop_plan(
    category: str,
    *,
    n_train: int = 200,
    n_test_good: int = 20,
    n_test_defect: int = 10,
    size: int = 256,
    seed: int = 0,
) -> dict[str, list[Crop]]:
    """Crops used by `build_textures`, keyed "train", "test_good" and each defect type (file order)."""
    height, width = load_photo(category).shape[:2]
    if width < size:
        raise ValueError(f"photo of width {width} is narrower than the crop size {size}")
    boundary = split_row(height, size)
    rng = _rng(seed, category, 0)

    def draw(n: int, lo: int, hi: int) -> list[Crop]:
        tops = rng.integers(lo, hi - size + 1, n)
        lefts = rng.integers(0, width - size + 1, n)
        flips = rng.integers(0, 4, n)
        return [Crop(int(t), int(x), size, int(f)) for t, x, f in zip(tops, lefts, flips, strict=True)]

    plan = {"train": draw(n_train, 0, boundary), "test_good": draw(n_test_good, boundary, height)}
    plan.update({name: draw(n_test_defect, boundary, height) for name in DEFECT_TYPES})
    return plan


def _cut(photo: np.ndarray, crop: Crop) -> np.ndarray:
    """Pixels of one crop, flipped as the crop says; (size, size, C) uint8."""
    top, left, bottom, right = crop.box
    patch = photo[top:bottom, left:right]
    if crop.flip & 1:
        patch = patch[:, ::-1]
    if crop.flip & 2:
        patch = patch[::-1]
    return np.ascontiguousarray(patch)


def _save_png(path: Path, image: np.ndarray) -> None:
    """Write (H, W) or (H, W, C) uint8 as PNG; level 1 because size matters less than build time."""
    Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image).save(
        path, compress_level=1
    )


def _build_key(category: str, **params: int) -> str:
    """Marker content: everything that determines the output bytes."""
    return json.dumps(
        {"version": _VERSION, "category": category, "defects": list(DEFECT_TYPES), **params}, sort_keys=True
    )


def _is_complete(folder: Path, key: str) -> bool:
    """Whether `folder` is a finished build made with exactly these parameters."""
    marker = folder / MARKER
    return marker.is_file() and marker.read_text() == key


def _write_category(dest: Path, category: str, plan: dict[str, list[Crop]], seed: int) -> None:
    """Write all PNGs of one category into `dest` (no marker)."""
    photo = load_photo(category)
    folders = {"train": dest / "train" / "good", "test_good": dest / "test" / "good"}
    for split in ("train", "test_good"):
        folders[split].mkdir(parents=True)
        for i, crop in enumerate(plan[split]):
            _save_png(folders[split] / f"{i:03d}.png", _cut(photo, crop))
    rng = _rng(seed, category, 1)  # own stream: defects do not change with n_train or n_test_good
    for name in DEFECT_TYPES:
        (dest / "test" / name).mkdir(parents=True)
        (dest / "ground_truth" / name).mkdir(parents=True)
        for i, crop in enumerate(plan[name]):
            image, mask = DEFECTS[name](_cut(photo, crop), rng)
            _save_png(dest / "test" / name / f"{i:03d}.png", image)
            _save_png(dest / "ground_truth" / name / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)


def build_textures(
    root: Path,
    categories: Sequence[str] | None = None,
    *,
    n_train: int = 200,
    n_test_good: int = 20,
    n_test_defect: int = 10,
    size: int = 256,
    seed: int = 0,
) -> Path:
    """Build (or reuse) the demo tree under root; idempotent; returns root."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    params = dict(n_train=n_train, n_test_good=n_test_good, n_test_defect=n_test_defect, size=size, seed=seed)
    for category in categories if categories is not None else TEXTURES:
        final, key = root / category, _build_key(category, **params)
        if _is_complete(final, key):
            continue
        plan = crop_plan(category, **params)
        # Build in a hidden sibling and rename it into place: an interrupted build never looks complete.
        tmp = Path(tempfile.mkdtemp(prefix=f".{category}.building.", dir=root))
        try:
            _write_category(tmp, category, plan, seed)
            (tmp / MARKER).write_text(key)  # last write: marks the tree as finished
            if _is_complete(final, key):  # another process finished the same build meanwhile
                continue
            if final.exists():
                stale = Path(tempfile.mkdtemp(prefix=f".{category}.stale.", dir=root))
                final.rename(stale / category)
                shutil.rmtree(stale)
            tmp.rename(final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def save_preview(root: Path, out: Path, categories: Sequence[str] | None = None) -> Path:
    """Grid per category: a train crop, then each defect type as image and mask."""
    categories = list(categories if categories is not None else TEXTURES)
    columns = [("train", lambda c: root / c / "train" / "good" / "000.png")]
    for name in DEFECT_TYPES:
        columns.append((name, lambda c, n=name: root / c / "test" / n / "000.png"))
        columns.append((f"{name} mask", lambda c, n=name: root / c / "ground_truth" / n / "000_mask.png"))
    tile = Image.open(columns[0][1](categories[0])).size[0]
    label = 14  # px of caption above each tile
    grid = Image.new("RGB", (tile * len(columns), (tile + label) * len(categories)), "white")
    draw = ImageDraw.Draw(grid)
    for row, category in enumerate(categories):
        for col, (title, path) in enumerate(columns):
            x, y = col * tile, row * (tile + label)
            draw.text((x + 2, y + 1), f"{category} / {title}", fill="black")
            grid.paste(Image.open(path(category)).convert("RGB"), (x, y + label))
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: build the demo tree and optionally save a preview grid."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--categories", nargs="+", choices=sorted(TEXTURES | MATERIALS), default=None)
    parser.add_argument("--n-train", type=int, default=200)
    parser.add_argument("--n-test-good", type=int, default=20)
    parser.add_argument("--n-test-defect", type=int, default=10)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--preview", type=Path, default=None, help="write a PNG grid of examples here")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    build_textures(
        args.root,
        args.categories,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_defect=args.n_test_defect,
        size=args.size,
        seed=args.seed,
    )
    print(f"textures ready under {args.root} in {time.perf_counter() - start:.1f} s")
    if args.preview is not None:
        print(f"preview: {save_preview(args.root, args.preview, args.categories)}")


if __name__ == "__main__":
    main()


class TexturesDataModule(MVTecDataModule):
    """The texture demo served in the MVTec layout; built under `root` on first use (seconds)."""

    data_name = "textures"
    categories: Sequence[str] = tuple(TEXTURES)

    def __init__(self, root: str, category: str, build_seed: int = 0, **kwargs) -> None:
        if category not in self.categories:
            raise ValueError(
                f"data={self.data_name} category={category!r} is not one of {sorted(self.categories)}"
            )
        super().__init__(root=root, category=category, **kwargs)
        self.build_seed = build_seed

    @property
    def where(self) -> str:
        return f"{self.data_name} demo category '{self.category}' in {self.root}"

    def fetch(self) -> None:
        build_textures(self.root, [self.category], seed=self.build_seed)


class MaterialsDataModule(TexturesDataModule):
    """The same demo cut from the robosuite material photos (felt, parquet, plaster, wall)."""

    data_name = "materials"
    categories = tuple(MATERIALS)

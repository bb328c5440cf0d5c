"""MVTec AD, and any folder in its layout.

<root>/<category>/train/good/*.png
<root>/<category>/test/<good | defect type>/*.png
<root>/<category>/ground_truth/<defect type>/<stem>_mask.png
"""

from __future__ import annotations

from pathlib import Path

from anomaly_ae.data.base import AnomalyDataModule
from anomaly_ae.data.images import list_images
from anomaly_ae.data.listing import Listing, Problem, Sample
from anomaly_ae.data.remote import Source, fetch

TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS = (
    "bottle", "cable", "capsule", "hazelnut", "metal_nut",
    "pill", "screw", "toothbrush", "transistor", "zipper",
)  # fmt: skip
CATEGORIES = TEXTURES + OBJECTS
MVTEC_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-anomaly-detection"
MVTEC_URL = (  # the official mirror anomalib uses (2026-07); the page above links to the current one
    "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/"
    "mvtec_anomaly_detection.tar.xz"
)
MVTEC_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
LICENCE = "CC BY-NC-SA 4.0, non-commercial"


def image_folder_problem(folder: Path, role: str) -> Problem | None:
    """The problem with a folder that must hold images: missing, or empty."""
    if not folder.is_dir():
        return Problem(str(folder), f"folder is missing: {role}")
    if not list_images(folder):
        return Problem(str(folder), f"folder has no images (png, jpg, bmp, tif): {role}")
    return None


def missing_mask(expected: Path) -> str:
    """Why a defective image has no mask, naming a file with the mask's name in another format."""
    others = sorted(p.name for p in expected.parent.glob(f"{expected.stem}.*") if p != expected)
    if not others:
        return f"defective test image has no mask: expected {expected}"
    return (
        f"defective test image has no mask: expected {expected}, found {others[0]} instead; masks must be "
        f"lossless .png (JPEG blurs the 0/255 edges): save it as {expected.name}"
    )


def list_category(root: Path, category: str, mask_suffix: str = "_mask") -> Listing:
    """List one category's train normals and test images; masks are paired by file stem."""
    base = root / category
    train_dir, test_dir = base / "train" / "good", base / "test"
    train = [Sample(str(p), 0) for p in list_images(train_dir)] if train_dir.is_dir() else []
    listing, unmasked = Listing(train, []), []
    kinds = sorted(p for p in test_dir.iterdir() if p.is_dir()) if test_dir.is_dir() else []
    for kind_dir in kinds:
        for path in list_images(kind_dir):
            kind = kind_dir.name
            if kind == "good":
                listing.test.append(Sample(str(path), 0))
                continue
            mask = base / "ground_truth" / kind / f"{path.stem}{mask_suffix}.png"
            if not mask.is_file():
                unmasked.append(Problem(str(path), missing_mask(mask)))
            listing.test.append(Sample(str(path), 1, kind, str(mask) if mask.is_file() else None))
    if not listing.train and not listing.test:
        listing.problems.append(Problem(str(base), "the category is empty: no images in train/good or test/"))
        return listing
    if problem := image_folder_problem(train_dir, "every category needs its normal training images there"):
        listing.problems.append(problem)
    if not listing.test:
        role = "every category needs test/good and test/<defect type> folders of images"
        state = "has no images" if kinds else "is missing"
        listing.problems.append(Problem(str(test_dir), f"folder {state}: {role}"))
    listing.problems += unmasked
    return listing


class MVTecDataModule(AnomalyDataModule):
    """One MVTec AD category (or any tree in the same layout).

    Args:
        channels: 1 or 3; None keeps the files' mode (MVTec AD's grid, screw and zipper are grayscale).
        download: fetch the official archive into root when root is missing (checked, resumable, locked).
    """

    def __init__(
        self,
        root: str,
        category: str,
        download: bool = False,
        url: str = MVTEC_URL,
        sha256: str = MVTEC_SHA256,
        mask_suffix: str = "_mask",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root, self.category = Path(root).expanduser(), category
        self.download, self.mask_suffix = download, mask_suffix
        holds = "one folder per category (carpet/, grid/, ..., zipper/)"
        self.source = Source("MVTec AD", MVTEC_PAGE, LICENCE, holds, url, sha256)

    @property
    def where(self) -> str:
        return f"MVTec AD category '{self.category}' in {self.root}"

    def fetch(self) -> None:
        fetch(self.source, self.root, self.root / self.category, self.download, self.progress)

    def load(self) -> Listing:
        return list_category(self.root, self.category, self.mask_suffix)

"""MVTec AD 2: 8 categories, each with an official validation split and a public test split with masks.

<root>/<category>/train/good/*.png
<root>/<category>/validation/good/*.png           the validation split (nothing is held out of train)
<root>/<category>/test_public/{good,bad}/*.png
<root>/<category>/test_public/ground_truth/bad/<stem>_mask.png
test_private/ and test_private_mixed/ have no public labels (MVTec's server scores them): not used here.
"""

from __future__ import annotations

from pathlib import Path

from anomaly_ae.data.base import AnomalyDataModule
from anomaly_ae.data.images import list_images
from anomaly_ae.data.listing import Listing, Problem, Sample
from anomaly_ae.data.mvtec import image_folder_problem
from anomaly_ae.data.remote import Source, fetch

CATEGORIES = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")
MVTEC_AD2_PAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad-2"
LICENCE = "CC BY-NC-SA 4.0, non-commercial"


def list_category(root: Path, category: str, mask_suffix: str = "_mask") -> Listing:
    """List one category's train, validation and public test images; masks are paired by file stem."""
    base = root / category
    listing = Listing([], [], val=[])
    folders = {
        "train": (base / "train" / "good", "the normal training images"),
        "val": (base / "validation" / "good", "the official validation images"),
        "good": (base / "test_public" / "good", "the normal public test images"),
        "bad": (base / "test_public" / "bad", "the defective public test images"),
    }
    for key, (folder, role) in folders.items():
        if problem := image_folder_problem(folder, f"every category needs {role} there"):
            listing.problems.append(problem)
            continue
        images = list_images(folder)
        if key in ("train", "val", "good"):
            target = {"train": listing.train, "val": listing.val, "good": listing.test}[key]
            target += [Sample(str(p), 0) for p in images]
            continue
        for path in images:
            mask = base / "test_public" / "ground_truth" / "bad" / f"{path.stem}{mask_suffix}.png"
            if not mask.is_file():
                message = f"defective test image has no mask: expected {mask}"
                listing.problems.append(Problem(str(path), message))
            listing.test.append(Sample(str(path), 1, "bad", str(mask) if mask.is_file() else None))
    return listing


class MVTecAD2DataModule(AnomalyDataModule):
    """One MVTec AD 2 category; validation uses the official validation/good images (val_fraction unused)."""

    def __init__(self, root: str, category: str, download: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root, self.category, self.download = Path(root).expanduser(), category, download
        holds = "one folder per category (can/, fabric/, ..., walnuts/)"
        self.source = Source("MVTec AD 2", MVTEC_AD2_PAGE, LICENCE, holds)  # no public URL: registration

    @property
    def where(self) -> str:
        return f"MVTec AD 2 category '{self.category}' in {self.root}"

    def fetch(self) -> None:
        fetch(self.source, self.root, self.root / self.category, self.download, self.progress)

    def load(self) -> Listing:
        return list_category(self.root, self.category)

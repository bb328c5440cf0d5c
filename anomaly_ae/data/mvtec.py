"""MVTec AD, and any folder in its layout.

<root>/<category>/train/good/*.png
<root>/<category>/test/<good | defect type>/*.png
<root>/<category>/ground_truth/<defect type>/<stem>_mask.png
"""

from __future__ import annotations

from pathlib import Path

from anomaly_ae.data.base import AnomalyDataModule, Sample, image_channels, list_images

TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
OBJECTS = (
    "bottle", "cable", "capsule", "hazelnut", "metal_nut",
    "pill", "screw", "toothbrush", "transistor", "zipper",
)  # fmt: skip
CATEGORIES = TEXTURES + OBJECTS
MVTEC_URL = "https://www.mvtec.com/company/research/datasets/mvtec-anomaly-detection"


def scan_category(root: Path, category: str, mask_suffix: str = "_mask") -> tuple[list[Sample], list[Sample]]:
    """List the train (normal) and test samples of one category; masks are paired by file stem."""
    base = root / category
    if not base.is_dir():
        raise FileNotFoundError(
            f"category folder {base} does not exist. Get MVTec AD from {MVTEC_URL}, extract it and set "
            f"data.root to the folder that contains '{category}/'; or run the offline demo with data=elpv."
        )
    train_dir = base / "train" / "good"
    if not train_dir.is_dir():
        raise FileNotFoundError(f"{train_dir} is missing: every category needs train/good with normal images")
    train = [Sample(str(p), 0) for p in list_images(train_dir)]
    if not train:
        raise FileNotFoundError(f"{train_dir} contains no images (png, jpg, bmp, tif): the category is empty")
    test_dir = base / "test"
    if not test_dir.is_dir():
        raise FileNotFoundError(f"{test_dir} is missing: every category needs test/<good or defect type>/")
    test = []
    for kind_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        kind = kind_dir.name
        for path in list_images(kind_dir):
            if kind == "good":
                test.append(Sample(str(path), 0))
                continue
            mask = base / "ground_truth" / kind / f"{path.stem}{mask_suffix}.png"
            if not mask.is_file():
                fix = f"add it, or move the image out of test/{kind}/"
                raise FileNotFoundError(f"mask {mask} for test image {path} is missing: {fix}")
            test.append(Sample(str(path), 1, kind, str(mask)))
    if not test:
        raise FileNotFoundError(f"{test_dir} contains no images: the category has no test split")
    return train, test


class MVTecDataModule(AnomalyDataModule):
    """One MVTec AD category (or any tree in the same layout).

    Args:
        channels: 1 or 3; None keeps the files' mode (MVTec AD's grid, screw and zipper are grayscale).
    """

    def __init__(self, root: str, category: str, channels: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.root, self.category, self.fixed_channels = Path(root).expanduser(), category, channels

    def load(self):
        train, test = scan_category(self.root, self.category)
        channels = self.fixed_channels or image_channels(train[0].path)
        return train, test, channels, None

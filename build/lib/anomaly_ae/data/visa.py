"""VisA (Visual Anomaly, Amazon): 12 categories, listed by the official one-class split file.

<root>/split_csv/1cls.csv                       object,split,label,image,mask; paths relative to root
<root>/<category>/Data/Images/{Normal,Anomaly}/*.JPG
<root>/<category>/Data/Masks/Anomaly/*.png      label maps: 0 background, k > 0 the k-th defect class
<root>/<category>/image_anno.csv                image,label,mask: each anomaly's defect names (optional)
"""

from __future__ import annotations

import csv
from pathlib import Path, PurePosixPath

from anomaly_ae.data.base import AnomalyDataModule
from anomaly_ae.data.listing import Listing, Problem, Sample
from anomaly_ae.data.remote import Source, fetch

CATEGORIES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1",
    "macaroni2", "pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum",
)  # fmt: skip
VISA_PAGE = "https://github.com/amazon-science/spot-diff"
VISA_URL = "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar"
VISA_SHA256 = "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362"  # as anomalib checks it
LICENCE = "CC BY 4.0"
COLUMNS = ("object", "split", "label", "image", "mask")


def defect_names(annotations: Path) -> dict[str, str]:
    """{anomalous image file name: defect type} from a category's image_anno.csv; {} when it is absent."""
    if not annotations.is_file():
        return {}
    with annotations.open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("image") and row.get("label")]
    return {PurePosixPath(row["image"]).name: row["label"].strip() for row in rows}


def list_visa(root: Path, category: str, split_file: str = "split_csv/1cls.csv") -> Listing:
    """List one category's rows of the split file; files and masks are checked to exist."""
    listing, table = Listing([], []), root / split_file
    with table.open(newline="") as file:
        reader = csv.DictReader(file)
        rows = list(reader)
    if not set(COLUMNS) <= set(reader.fieldnames or ()):
        found = ",".join(reader.fieldnames or ())
        listing.problems.append(Problem(str(table), f"columns are {found}; expected {','.join(COLUMNS)}"))
        return listing
    if not (root / category).is_dir():
        listed = ", ".join(sorted({row["object"] for row in rows}))
        message = f"folder is missing: VisA category '{category}' (the split file lists {listed})"
        listing.problems.append(Problem(str(root / category), message))
        return listing
    names = defect_names(root / category / "image_anno.csv")
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        if row["object"] != category:
            continue
        split, label, image = row["split"], row["label"], root / row["image"]
        source = f"line {line} of {table}"
        if split not in ("train", "test") or label not in ("normal", "anomaly"):
            message = f"line {line}: split {split!r}, label {label!r}; expected train/test, normal/anomaly"
            listing.problems.append(Problem(str(table), message))
        elif not image.is_file():
            listing.problems.append(Problem(str(image), f"image file is missing (listed on {source})"))
        elif label == "normal":
            (listing.train if split == "train" else listing.test).append(Sample(str(image), 0))
        elif split == "train":
            listing.problems.append(Problem(str(image), f"anomalous image in the train split ({source})"))
        else:
            mask = root / row["mask"] if row["mask"] else None
            if mask is None or not mask.is_file():
                expected = f"expected {mask}" if mask else f"no mask path on {source}"
                listing.problems.append(Problem(str(image), f"defective test image has no mask: {expected}"))
                mask = None
            defect_type = names.get(image.name, "anomaly")
            listing.test.append(Sample(str(image), 1, defect_type, str(mask) if mask else None))
    return listing


class VisaDataModule(AnomalyDataModule):
    """One VisA category, with the official 1-class split; images are not square (resized to image_size)."""

    label_masks = True  # VisA masks hold defect class ids (1, 2, ...), not 0/255

    def __init__(
        self,
        root: str,
        category: str,
        download: bool = False,
        split_file: str = "split_csv/1cls.csv",
        url: str = VISA_URL,
        sha256: str = VISA_SHA256,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.root, self.category, self.split_file = Path(root).expanduser(), category, split_file
        self.download = download
        holds = "split_csv/ and one folder per category (candle/, ..., pipe_fryum/)"
        self.source = Source("VisA", VISA_PAGE, LICENCE, holds, url, sha256)

    @property
    def where(self) -> str:
        return f"VisA category '{self.category}' in {self.root}"

    def fetch(self) -> None:
        fetch(self.source, self.root, self.root / self.split_file, self.download, self.progress)

    def load(self) -> Listing:
        return list_visa(self.root, self.category, self.split_file)

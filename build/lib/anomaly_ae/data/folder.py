"""Users' own data for one product: a folder of normal images, optional folders of defects and masks.

normal_dir/                  normal images (PNG, JPEG, BMP, TIFF; 8 or 16 bit)
abnormal_dirs: {scratch: dir, dent: dir} or [dir, ...]   one folder per defect type (names kept)
mask_dir/[<defect type>/]<stem><mask_suffix>.<ext>      optional masks, paired by file stem
normal_test_dir/             optional; else a seeded share of normal_dir is held out for testing
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from anomaly_ae.data.base import AnomalyDataModule, split_normals
from anomaly_ae.data.images import IMAGE_SUFFIXES, list_images
from anomaly_ae.data.listing import Listing, Problem, Sample


def defect_folders(abnormal_dirs: Mapping[str, str] | Sequence[str] | None) -> dict[str, Path]:
    """{defect type: folder}; a list names each type after its folder."""
    if not abnormal_dirs:
        return {}
    if isinstance(abnormal_dirs, str):  # data.abnormal_dirs=/one/folder
        abnormal_dirs = [abnormal_dirs]
    if isinstance(abnormal_dirs, Mapping):
        return {str(name): Path(folder).expanduser() for name, folder in abnormal_dirs.items()}
    folders = [Path(folder).expanduser() for folder in abnormal_dirs]
    names = [folder.name for folder in folders]
    if len(set(names)) < len(names):
        raise ValueError(
            f"data.abnormal_dirs={list(map(str, folders))} has folders of the same name, and the name is "
            "the defect type: give a mapping instead, e.g. data.abnormal_dirs={scratch:/a/x,dent:/b/x}"
        )
    return dict(zip(names, folders, strict=True))


def find_mask(mask_dir: Path, defect_type: str, stem: str, suffix: str) -> Path | None:
    """mask_dir/<defect type>/<stem><suffix>.<ext>, else mask_dir/<stem><suffix>.<ext>; None if neither."""
    for folder in (mask_dir / defect_type, mask_dir):
        for ext in IMAGE_SUFFIXES:
            for candidate in (folder / f"{stem}{suffix}{ext}", folder / f"{stem}{suffix}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def list_folders(
    normal_dir: Path,
    defects: dict[str, Path],
    mask_dir: Path | None,
    mask_suffix: str,
    normal_test_dir: Path | None,
    test_fraction: float,
    seed: int,
) -> Listing:
    """Train normals, test normals (given or held out) and defects with their masks, plus problems."""
    problems: list[Problem] = []

    def images(folder: Path, role: str) -> list[Path]:
        if not folder.is_dir():
            problems.append(Problem(str(folder), f"folder is missing ({role})"))
            return []
        found = list_images(folder)
        if not found:
            problems.append(Problem(str(folder), f"folder has no images (png, jpg, bmp, tif) ({role})"))
        return found

    normals = [Sample(str(p), 0) for p in images(normal_dir, "data.normal_dir")]
    if normal_test_dir is None:  # held out before validation is, so these are never trained on
        train, test = split_normals(normals, test_fraction, seed)
    else:
        train, test = normals, [Sample(str(p), 0) for p in images(normal_test_dir, "data.normal_test_dir")]
    if mask_dir is not None and not mask_dir.is_dir():
        problems.append(Problem(str(mask_dir), "folder is missing (data.mask_dir)"))
        mask_dir = None
    for defect_type, folder in defects.items():
        for path in images(folder, f"data.abnormal_dirs.{defect_type}"):
            mask = find_mask(mask_dir, defect_type, path.stem, mask_suffix) if mask_dir else None
            if mask_dir is not None and mask is None:
                name = f"{path.stem}{mask_suffix}.<png|jpg|bmp|tif>"
                expected = f"{name} in {mask_dir / defect_type} or {mask_dir}"
                problems.append(Problem(str(path), f"defective test image has no mask: expected {expected}"))
            test.append(Sample(str(path), 1, defect_type, str(mask) if mask else None))
    return Listing(train, test, problems=problems)


class FolderDataModule(AnomalyDataModule):
    """One product from plain folders (see the module docstring for the layout).

    Args:
        test_fraction: share of normal_dir held out as test normals when normal_test_dir is not given.
        mask_suffix: masks are named <image stem><mask_suffix>, e.g. 007_mask.png for 007.jpg.
    """

    def __init__(
        self,
        normal_dir: str,
        abnormal_dirs: Mapping[str, str] | Sequence[str] | None = None,
        mask_dir: str | None = None,
        mask_suffix: str = "_mask",
        normal_test_dir: str | None = None,
        test_fraction: float = 0.2,
        name: str = "folder",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.normal_dir = Path(normal_dir).expanduser()
        self.defects = defect_folders(abnormal_dirs)
        self.mask_dir = Path(mask_dir).expanduser() if mask_dir else None
        self.normal_test_dir = Path(normal_test_dir).expanduser() if normal_test_dir else None
        self.mask_suffix, self.test_fraction, self.name = mask_suffix, test_fraction, name
        # Without masks, anomalies are labelled per image only; pixel metrics would compare to all-zero maps.
        self.has_masks = self.mask_dir is not None

    @property
    def where(self) -> str:
        return f"folder data '{self.name}' ({self.normal_dir})"

    def load(self) -> Listing:
        return list_folders(
            self.normal_dir,
            self.defects,
            self.mask_dir,
            self.mask_suffix,
            self.normal_test_dir,
            self.test_fraction,
            self.split_seed,
        )

"""data=folder: users' own normal, defect and mask folders, in every common format and bit depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

from anomaly_ae.data.check import DataError
from anomaly_ae.data.folder import FolderDataModule
from tests.helpers import compose_config

FORMATS = {  # name: (array dtype, channels, PIL format)
    "grey8.png": (np.uint8, 1, "PNG"),
    "grey16.png": (np.uint16, 1, "PNG"),
    "colour.jpg": (np.uint8, 3, "JPEG"),
    "colour.bmp": (np.uint8, 3, "BMP"),
    "grey8.tif": (np.uint8, 1, "TIFF"),
    "grey16.tiff": (np.uint16, 1, "TIFF"),
}


def write(path: Path, value: int, dtype=np.uint8, channels: int = 1, size: int = 16) -> Path:
    """A flat image of one value (full-scale for 16-bit: value * 257)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((size, size), value * (257 if dtype == np.uint16 else 1), dtype)
    Image.fromarray(np.repeat(array[..., None], 3, 2) if channels == 3 else array).save(path)
    return path


def write_mask(path: Path, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size, size), np.uint8)
    mask[2:6, 2:6] = 255
    Image.fromarray(mask).save(path)
    return path


def folder_dm(**kwargs) -> FolderDataModule:
    options = dict(image_size=16, batch_size=2, eval_batch_size=4, num_workers=0, val_fraction=0.25)
    return FolderDataModule(**(options | kwargs))


def test_reads_png_jpeg_bmp_tiff_in_8_and_16_bit(tmp_path: Path) -> None:
    for i, (name, (dtype, channels, fmt)) in enumerate(sorted(FORMATS.items())):
        path = tmp_path / "ok" / name
        path.parent.mkdir(exist_ok=True)
        array = np.full((16, 16), (40 + 10 * i) * (257 if dtype == np.uint16 else 1), dtype)
        Image.fromarray(np.repeat(array[..., None], 3, 2) if channels == 3 else array).save(path, format=fmt)
    with pytest.warns(UserWarning, match="mixed modes"):
        dm = folder_dm(normal_dir=str(tmp_path / "ok"), test_fraction=0.0, val_fraction=0.0, channels=1)
        dm.setup("test")  # every file in train_set; only training refuses a split without validation
    values = {Path(item["path"]).name: item["image"].unique().tolist() for item in dm.train_set}
    expected = {name: [40 + 10 * i] for i, name in enumerate(sorted(FORMATS))}
    expected["colour.jpg"] = values["colour.jpg"]  # JPEG is lossy: checked loosely below
    assert values == expected
    assert abs(values["colour.jpg"][0] - 50) <= 2


def test_held_out_normals_are_never_trained_on(tmp_path: Path) -> None:
    for i in range(20):
        write(tmp_path / "ok" / f"{i:02d}.png", i)
    write(tmp_path / "bad" / "00.png", 200)
    dm = folder_dm(normal_dir=str(tmp_path / "ok"), abnormal_dirs=[str(tmp_path / "bad")], test_fraction=0.2)
    dm.setup()
    train, val = {s.path for s in dm.train_set.samples}, {s.path for s in dm.val_set.samples}
    test_normals = {s.path for s in dm.test_set.samples if s.label == 0}
    assert (len(train), len(val), len(test_normals)) == (12, 4, 4)
    assert not test_normals & (train | val) and not train & val
    assert len(train | val | test_normals) == 20
    again = folder_dm(normal_dir=str(tmp_path / "ok"), test_fraction=0.2)
    again.setup()
    other = folder_dm(normal_dir=str(tmp_path / "ok"), test_fraction=0.2, split_seed=1)
    other.setup()
    assert {s.path for s in again.test_set.samples} == test_normals
    assert {s.path for s in other.test_set.samples} != test_normals


def test_defect_names_masks_by_stem_and_normal_test_dir(tmp_path: Path) -> None:
    for i in range(6):
        write(tmp_path / "ok" / f"{i}.png", 100)
    write(tmp_path / "ok_test" / "t.png", 100)
    for name in ("scratch", "dent"):
        write(tmp_path / "defects" / name / "000.jpg", 150, channels=3)
    write_mask(tmp_path / "masks" / "scratch" / "000_mask.png")  # per-type sub-folder: stems may repeat
    write_mask(tmp_path / "masks" / "000_mask.bmp")  # flat fallback, any format
    dm = folder_dm(
        normal_dir=str(tmp_path / "ok"),
        abnormal_dirs={"scratch": str(tmp_path / "defects/scratch"), "dent": str(tmp_path / "defects/dent")},
        mask_dir=str(tmp_path / "masks"),
        normal_test_dir=str(tmp_path / "ok_test"),
    )
    with pytest.warns(UserWarning, match=r"mixed modes \(7 L, 2 RGB\); all are converted to RGB"):
        dm.setup()
    assert dm.has_masks and dm.channels == 3
    rows = [
        (Path(s.path).name, s.defect_type, s.mask_path and Path(s.mask_path).name)
        for s in dm.test_set.samples
    ]
    assert rows == [
        ("t.png", "good", None),
        ("000.jpg", "scratch", "000_mask.png"),
        ("000.jpg", "dent", "000_mask.bmp"),
    ]
    assert len(dm.train_set) + len(dm.val_set) == 6
    assert dm.test_set[1]["mask"].sum() == 16 and dm.test_set[1]["label"] == 1


def test_without_mask_dir_there_are_no_pixel_labels(tmp_path: Path) -> None:
    for i in range(6):
        write(tmp_path / "ok" / f"{i}.png", 100)
    write(tmp_path / "broken_tooth" / "a.png", 200)
    dm = folder_dm(normal_dir=str(tmp_path / "ok"), abnormal_dirs=str(tmp_path / "broken_tooth"))
    dm.setup()
    assert not dm.has_masks
    assert [(s.defect_type, s.label) for s in dm.test_set.samples][-1] == ("broken_tooth", 1)
    assert dm.test_set[len(dm.test_set) - 1]["mask"].sum() == 0


def test_problems_name_their_files(tmp_path: Path) -> None:
    for i in range(4):
        write(tmp_path / "ok" / f"{i}.png", 100)
    write(tmp_path / "bad" / "b.png", 200)
    (tmp_path / "masks").mkdir()
    dm = folder_dm(
        normal_dir=str(tmp_path / "ok"),
        abnormal_dirs={"bad": str(tmp_path / "bad"), "gone": str(tmp_path / "gone")},
        mask_dir=str(tmp_path / "masks"),
        normal_test_dir=str(tmp_path / "ok"),  # the training folder again: test images would be trained on
        name="widget",
    )
    with pytest.raises(DataError) as error:
        dm.setup()
    ok = tmp_path / "ok"
    assert str(error.value) == (
        f"6 problems in folder data 'widget' ({ok}), found before training; fix them and run again:\n"
        f"  - {tmp_path}/bad/b.png: defective test image has no mask: expected b_mask.<png|jpg|bmp|tif> in "
        f"{tmp_path}/masks/bad or {tmp_path}/masks\n"
        f"  - {tmp_path}/gone: folder is missing (data.abnormal_dirs.gone)\n"
        + "".join(
            f"  - {ok}/{i}.png: is in both train and test: a file may be in one split only\n"
            for i in range(4)
        )
    ).rstrip("\n")


def test_same_named_folders_need_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="has folders of the same name, and the name is the defect type"):
        folder_dm(normal_dir=str(tmp_path), abnormal_dirs=[str(tmp_path / "a/x"), str(tmp_path / "b/x")])


def test_folder_config_composes_and_runs_from_overrides(tmp_path: Path) -> None:
    for i in range(8):
        write(tmp_path / "ok" / f"{i}.png", 100)
    write(tmp_path / "scratch" / "s.png", 200)
    cfg = compose_config(
        [
            "data=folder",
            f"data.normal_dir={tmp_path / 'ok'}",
            f"data.abnormal_dirs={{scratch:{tmp_path / 'scratch'}}}",
            "data.image_size=16",
            "data.batch_size=2",
            "data.num_workers=0",
            "data.cache=true",
        ]
    )
    dm = instantiate(cfg.data)
    dm.setup()
    assert not dm.has_masks and dm.where == f"folder data 'grid' ({tmp_path / 'ok'})"
    assert [s.defect_type for s in dm.test_set.samples] == ["good", "good", "scratch"]
    assert torch.equal(dm.test_set[2]["image"], torch.full((1, 16, 16), 200, dtype=torch.uint8))

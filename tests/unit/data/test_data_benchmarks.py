"""data=visa and data=mvtec_ad2 on generated trees of their exact published layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from PIL import Image

from anomaly_ae.data.check import DataError
from anomaly_ae.data.mvtec_ad2 import CATEGORIES as AD2_CATEGORIES
from anomaly_ae.data.mvtec_ad2 import MVTecAD2DataModule
from anomaly_ae.data.visa import CATEGORIES as VISA_CATEGORIES
from anomaly_ae.data.visa import VisaDataModule
from tests.helpers import compose_config

SMALL = dict(image_size=16, batch_size=2, eval_batch_size=4, num_workers=0)


def save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_visa_tree(root: Path) -> Path:
    """VisA_20220922 in miniature: split_csv/1cls.csv, <cat>/Data/{Images,Masks}, <cat>/image_anno.csv."""
    rows = ["object,split,label,image,mask"]
    for category in ("candle", "pcb1"):
        images = root / category / "Data" / "Images"
        annotations = ["image,label,mask"]
        for i in range(6):
            save(images / "Normal" / f"{i:04d}.JPG", np.full((24, 32, 3), 90, np.uint8))  # not square
            split = "train" if i < 4 else "test"
            rows.append(f"{category},{split},normal,{category}/Data/Images/Normal/{i:04d}.JPG,")
            annotations.append(f"{category}/Data/Images/Normal/{i:04d}.JPG,normal,")
        for i in range(2):
            save(images / "Anomaly" / f"{i:03d}.JPG", np.full((24, 32, 3), 200, np.uint8))
            mask = np.zeros((24, 32), np.uint8)
            mask[4:8, 4:12] = i + 1  # label maps: the k-th defect class, not 255
            save(root / category / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png", mask)
            image, mask_rel = (
                f"{category}/Data/Images/Anomaly/{i:03d}.JPG",
                f"{category}/Data/Masks/Anomaly/{i:03d}.png",
            )
            rows.append(f"{category},test,anomaly,{image},{mask_rel}")
            names = "bent" if i == 0 else '"melt,scratch"'  # CSV-quoted: one anomaly, two defects
            annotations.append(f"{image},{names},{mask_rel}")
        (root / category / "image_anno.csv").write_text("\n".join(annotations) + "\n")
    (root / "split_csv").mkdir()
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def make_ad2_tree(root: Path, category: str = "vial") -> Path:
    """MVTec AD 2 in miniature: train/good, validation/good, test_public/{good,bad,ground_truth/bad}."""
    base = root / category
    for i in range(5):
        save(base / "train" / "good" / f"{i:03d}_regular.png", np.full((20, 24), 80, np.uint8))
    for i in range(2):
        save(base / "validation" / "good" / f"{i:03d}_regular.png", np.full((20, 24), 81, np.uint8))
        save(base / "test_public" / "good" / f"{i:03d}_overexposed.png", np.full((20, 24), 82, np.uint8))
        save(base / "test_public" / "bad" / f"{i:03d}_shift_1.png", np.full((20, 24), 180, np.uint8))
        mask = np.zeros((20, 24), np.uint8)
        mask[2:6, 2:6] = 255
        save(base / "test_public" / "ground_truth" / "bad" / f"{i:03d}_shift_1_mask.png", mask)
    (base / "test_private").mkdir()  # unlabelled: ignored
    save(base / "test_private" / "000.png", np.zeros((20, 24), np.uint8))
    return root


def test_category_lists() -> None:
    assert len(VISA_CATEGORIES) == 12 and "pipe_fryum" in VISA_CATEGORIES
    assert AD2_CATEGORIES == (
        "can",
        "fabric",
        "fruit_jelly",
        "rice",
        "sheet_metal",
        "vial",
        "wallplugs",
        "walnuts",
    )


def test_visa_follows_the_split_file_and_binarises_label_masks(tmp_path: Path) -> None:
    root = make_visa_tree(tmp_path / "visa")
    dm = VisaDataModule(str(root), "pcb1", val_fraction=0.25, cache=True, **SMALL)
    dm.setup()
    assert dm.channels == 3 and dm.has_masks
    assert (len(dm.train_set), len(dm.val_set)) == (3, 1)
    tested = [(Path(s.path).name, s.label, s.defect_type) for s in dm.test_set.samples]
    assert tested == [
        ("0004.JPG", 0, "good"),
        ("0005.JPG", 0, "good"),
        ("000.JPG", 1, "bent"),
        ("001.JPG", 1, "melt,scratch"),
    ]
    assert all("pcb1" in s.path for s in dm.train_set.samples + dm.test_set.samples)
    # Class ids 1 and 2 are both "defect"; 32x24 -> 16x16 halves the 8x4 box to 4x(4*16/24).
    masks = dm.test_set.masks[2:, 0]
    assert masks.unique().tolist() == [0, 1] and masks[0].sum() == masks[1].sum() > 0


def test_visa_problems_name_the_csv_lines(tmp_path: Path) -> None:
    root = make_visa_tree(tmp_path / "visa")
    (root / "candle/Data/Masks/Anomaly/001.png").unlink()
    (root / "candle/Data/Images/Normal/0000.JPG").unlink()
    with pytest.raises(DataError) as error:
        VisaDataModule(str(root), "candle", **SMALL).setup()
    table = root / "split_csv/1cls.csv"
    assert str(error.value) == (
        f"2 problems in VisA category 'candle' in {root}, found before training; fix them and run again:\n"
        f"  - {root}/candle/Data/Images/Normal/0000.JPG: image file is missing "
        f"(listed on line 2 of {table})\n"
        f"  - {root}/candle/Data/Images/Anomaly/001.JPG: defective test image has no mask: expected "
        f"{root}/candle/Data/Masks/Anomaly/001.png"
    )
    with pytest.raises(
        DataError, match=r"folder is missing: VisA category 'fryum' \(the split file lists candle, pcb1\)"
    ):
        VisaDataModule(str(root), "fryum", **SMALL).setup()


def test_visa_without_data_offers_the_public_archive(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        VisaDataModule(str(tmp_path / "visa"), "candle", **SMALL).setup()
    message = str(error.value)
    assert message.startswith(
        f"VisA not found: {tmp_path}/visa/split_csv/1cls.csv does not exist. To get it, "
    )
    assert "https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/VisA_20220922.tar" in message
    assert "2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362" in message
    assert message.endswith("Licence: CC BY 4.0. Without it, data=elpv runs the offline demo.")


def test_mvtec_ad2_uses_the_official_validation_split(tmp_path: Path) -> None:
    root = make_ad2_tree(tmp_path / "ad2")
    dm = MVTecAD2DataModule(str(root), "vial", val_fraction=0.5, **SMALL)
    dm.setup()
    assert dm.channels == 1
    assert [Path(s.path).parent.name for s in dm.train_set.samples] == ["good"] * 5  # nothing held out
    assert [Path(s.path).name for s in dm.val_set.samples] == ["000_regular.png", "001_regular.png"]
    assert "validation" in dm.val_set.samples[0].path
    tested = [(Path(s.path).name, s.defect_type, s.mask_path is not None) for s in dm.test_set.samples]
    assert tested == [
        ("000_overexposed.png", "good", False),
        ("001_overexposed.png", "good", False),
        ("000_shift_1.png", "bad", True),
        ("001_shift_1.png", "bad", True),
    ]
    assert dm.test_set[3]["mask"].sum() > 0


def test_mvtec_ad2_problems_and_by_hand_instructions(tmp_path: Path) -> None:
    root = make_ad2_tree(tmp_path / "ad2")
    (root / "vial/test_public/ground_truth/bad/001_shift_1_mask.png").unlink()
    for image in (root / "vial/validation/good").iterdir():
        image.unlink()
    with pytest.raises(DataError) as error:
        MVTecAD2DataModule(str(root), "vial", **SMALL).setup()
    assert str(error.value).splitlines()[1:] == [
        f"  - {root}/vial/validation/good: folder has no images (png, jpg, bmp, tif): every category needs "
        "the official validation images there",
        f"  - {root}/vial/test_public/bad/001_shift_1.png: defective test image has no mask: expected "
        f"{root}/vial/test_public/ground_truth/bad/001_shift_1_mask.png",
    ]
    with pytest.raises(FileNotFoundError) as error:
        MVTecAD2DataModule(str(tmp_path / "none"), "vial", download=True, **SMALL).setup()
    assert str(error.value) == (
        f"MVTec AD 2 not found: {tmp_path}/none/vial does not exist. To get it, data.download=true cannot "
        "fetch it: its licence (CC BY-NC-SA 4.0, non-commercial) asks you to register, so download it by "
        "hand from https://www.mvtec.com/company/research/datasets/mvtec-ad-2 and extract it so that "
        f"{tmp_path}/none holds one folder per category (can/, fabric/, ..., walnuts/). Licence: "
        "CC BY-NC-SA 4.0, non-commercial. Without it, data=elpv runs the offline demo."
    )


@pytest.mark.parametrize(
    ("name", "make", "category"), [("visa", make_visa_tree, "candle"), ("mvtec_ad2", make_ad2_tree, "vial")]
)
def test_configs_compose_and_set_up(tmp_path: Path, name: str, make, category: str) -> None:
    root = make(tmp_path / name)
    overrides = [f"data={name}", f"data.root={root}", f"category={category}", "data.image_size=16"]
    cfg = compose_config(overrides + ["data.batch_size=2", "data.num_workers=0", "data.val_fraction=0.25"])
    dm = instantiate(cfg.data)
    dm.setup()
    assert dm.cache and dm.train_set.images.shape[-2:] == (16, 16)

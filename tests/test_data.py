import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_ae.data.elpv import ElpvDataModule, elpv_split
from anomaly_ae.data.mvtec import MVTecDataModule, scan_category


def datamodule(root, **kwargs) -> MVTecDataModule:
    options = dict(image_size=32, batch_size=4, eval_batch_size=4, num_workers=0, val_fraction=0.25)
    return MVTecDataModule(root=str(root), category="toy", **(options | kwargs))


def test_splits_and_batches(mvtec_root):
    dm = datamodule(mvtec_root)
    dm.setup("fit")
    assert dm.channels == 1
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (18, 6, 12)
    assert not {s.path for s in dm.train_set.samples} & {s.path for s in dm.val_set.samples}
    batch = next(iter(dm.test_dataloader()))
    assert batch["image"].shape == (4, 1, 32, 32) and batch["image"].dtype == torch.uint8
    assert batch["mask"].shape == (4, 1, 32, 32) and batch["mask"].dtype == torch.uint8
    assert batch["label"].tolist() == [0, 0, 0, 0]  # test/good sorts before test/square
    assert len(next(iter(dm.train_dataloader()))["image"]) == 4


def test_rgb_files_give_three_channels_unless_configured(tmp_path):
    from tests.conftest import make_mvtec_tree

    root = make_mvtec_tree(tmp_path, channels=3)
    dm = datamodule(root)
    dm.setup()
    assert dm.channels == 3
    dm = datamodule(root, channels=1)
    dm.setup()
    assert dm.test_set[0]["image"].shape == (1, 32, 32)


def test_masks_pair_with_images_by_stem_not_by_sorted_position(tmp_path):
    base = tmp_path / "toy"
    for folder in ("train/good", "test/crack", "ground_truth/crack"):
        (base / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(base / "train/good/000.png")
    # Sorted, the images are [b, b_1] but the masks are [b_1_mask, b_mask]: position pairing would swap them.
    for stem, row in (("b", 0), ("b_1", 20)):
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(base / f"test/crack/{stem}.png")
        mask = np.zeros((32, 32), np.uint8)
        mask[row : row + 4] = 255
        Image.fromarray(mask).save(base / f"ground_truth/crack/{stem}_mask.png")
    _, test = scan_category(tmp_path, "toy")
    by_stem = {s.path.rsplit("/", 1)[-1]: s.mask_path.rsplit("/", 1)[-1] for s in test}
    assert by_stem == {"b.png": "b_mask.png", "b_1.png": "b_1_mask.png"}
    dm = MVTecDataModule(str(tmp_path), "toy", image_size=32, batch_size=1, val_fraction=0.0, num_workers=0)
    dm.setup()
    rows = {}
    for index, sample in enumerate(dm.test_set.samples):
        first_masked_row = dm.test_set[index]["mask"][0].any(dim=1).nonzero()[0].item()
        rows[sample.path.rsplit("/", 1)[-1]] = first_masked_row
    assert rows == {"b.png": 0, "b_1.png": 20}


def test_missing_mask_names_the_file(mvtec_root):
    mask = mvtec_root / "toy/ground_truth/square/002_mask.png"
    mask.unlink()
    image = mvtec_root / "toy/test/square/002.png"
    with pytest.raises(FileNotFoundError) as error:
        datamodule(mvtec_root).setup()
    assert str(error.value) == (
        f"mask {mask} for test image {image} is missing: add it, or move the image out of test/square/"
    )


def test_unreadable_image_names_the_file(mvtec_root):
    broken = mvtec_root / "toy/test/good/001.png"
    broken.write_bytes(b"not a png")
    dm = datamodule(mvtec_root)
    dm.setup()
    index = [s.path for s in dm.test_set.samples].index(str(broken))
    with pytest.raises(OSError, match=f"^cannot read image {broken}: .*Replace or delete the file.$"):
        dm.test_set[index]


def test_missing_category_points_to_the_dataset_and_the_demo(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        datamodule(tmp_path / "nowhere").setup()
    message = str(error.value)
    assert f"category folder {tmp_path / 'nowhere' / 'toy'} does not exist" in message
    assert "mvtec.com" in message and "data=elpv" in message


def test_empty_category_is_a_clear_error(mvtec_root):
    for image in (mvtec_root / "toy/train/good").iterdir():
        image.unlink()
    with pytest.raises(FileNotFoundError, match="train/good contains no images .*: the category is empty"):
        datamodule(mvtec_root).setup()


def test_too_few_training_images_for_a_batch(mvtec_root):
    with pytest.raises(ValueError, match="only 18 training images .* fewer than data.batch_size=32"):
        datamodule(mvtec_root, batch_size=32).setup()


def test_elpv_split_is_seeded_and_disjoint():
    train, test = elpv_split("mono", train_fraction=0.8, min_defect_probability=0.6, seed=0)
    assert len(train) == 470  # 80 % of the 588 defect-free mono cells
    assert sum(s.label == 0 for s in test) == 118
    assert sum(s.label == 1 for s in test) == 56 + 313  # cells rated 2/3 and 1
    assert not {s.path for s in train} & {s.path for s in test}
    again, _ = elpv_split("mono", 0.8, 0.6, seed=0)
    other, _ = elpv_split("mono", 0.8, 0.6, seed=1)
    assert [s.path for s in again] == [s.path for s in train]
    assert [s.path for s in other] != [s.path for s in train]


def test_elpv_datamodule_serves_resized_uint8_cells():
    dm = ElpvDataModule("poly", image_size=64, batch_size=8, eval_batch_size=8, num_workers=0)
    dm.setup()
    assert not dm.has_masks and dm.channels == 1
    assert dm.train_set.images.shape == (len(dm.train_set), 1, 64, 64)
    item = dm.test_set[len(dm.test_set) - 1]
    assert item["image"].dtype == torch.uint8 and item["label"] == 1 and item["mask"].sum() == 0

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_ae.data.elpv import ElpvDataModule, elpv_split
from anomaly_ae.data.images import read_image
from anomaly_ae.data.mvtec import MVTecDataModule, list_category
from tests.helpers import make_mvtec_tree


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
    test = list_category(tmp_path, "toy").test
    by_stem = {s.path.rsplit("/", 1)[-1]: s.mask_path.rsplit("/", 1)[-1] for s in test}
    assert by_stem == {"b.png": "b_mask.png", "b_1.png": "b_1_mask.png"}
    dm = MVTecDataModule(str(tmp_path), "toy", image_size=32, batch_size=1, val_fraction=0.0, num_workers=0)
    dm.setup("test")  # testing needs no validation split
    rows = {}
    for index, sample in enumerate(dm.test_set.samples):
        first_masked_row = dm.test_set[index]["mask"][0].any(dim=1).nonzero()[0].item()
        rows[sample.path.rsplit("/", 1)[-1]] = first_masked_row
    assert rows == {"b.png": 0, "b_1.png": 20}


def test_a_file_broken_after_setup_names_the_file(mvtec_root):
    dm = datamodule(mvtec_root)
    dm.setup()
    broken = mvtec_root / "toy/test/good/001.png"
    broken.write_bytes(b"not a png")
    index = [s.path for s in dm.test_set.samples].index(str(broken))
    with pytest.raises(OSError, match=f"^cannot read image {broken}: .*Replace or delete the file.$"):
        dm.test_set[index]


def test_missing_root_names_root_url_checksum_and_demo(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        datamodule(tmp_path / "nowhere").setup()
    url = (
        "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/"
        "mvtec_anomaly_detection.tar.xz"
    )
    digest = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
    root = tmp_path / "nowhere"
    assert str(error.value) == (
        f"MVTec AD not found: {root / 'toy'} does not exist. To get it, set data.download=true to download "
        f"{url} into {tmp_path} and extract it as {root} (checked against sha256 {digest}); or download that "
        f"URL by hand, check that its sha256 is {digest}, and extract it so that {root} holds one folder per "
        "category (carpet/, grid/, ..., zipper/). Licence: CC BY-NC-SA 4.0, non-commercial. Without it, "
        "data=elpv runs the offline demo."
    )


def test_wrong_category_lists_what_the_root_holds(mvtec_root):
    with pytest.raises(FileNotFoundError) as error:
        MVTecDataModule(str(mvtec_root), "gird", num_workers=0).setup()
    assert str(error.value) == (
        f"{mvtec_root / 'gird'} does not exist, but {mvtec_root} does and holds toy. data.root must be the "
        "folder that holds one folder per category (carpet/, grid/, ..., zipper/); check it and the category."
    )


def test_cache_serves_the_same_items_as_the_files(tmp_path):
    root = make_mvtec_tree(tmp_path, channels=3, n_train=8, n_good=3, n_defect=3)
    kwargs = dict(image_size=24, val_fraction=0.25, batch_size=2)  # 32 -> 24: the resize is exercised
    plain, cached = datamodule(root, **kwargs), datamodule(root, cache=True, **kwargs)
    plain.setup()
    cached.setup()
    assert plain.train_set.images is None and cached.test_set.masks.shape == (6, 1, 24, 24)
    for split in ("train_set", "val_set", "test_set"):
        for a, b in zip(getattr(plain, split), getattr(cached, split), strict=True):
            assert a["path"] == b["path"]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert cached.test_set[5]["mask"].sum() > 0


def test_cached_batches_come_through_worker_processes(tmp_path):
    root = make_mvtec_tree(tmp_path, n_train=8, n_good=2, n_defect=2)
    dm = datamodule(root, cache=True, num_workers=2, val_fraction=0.0, eval_batch_size=4)
    dm.setup("test")  # testing needs no validation split
    batches = list(dm.test_dataloader())
    images = torch.cat([b["image"] for b in batches])
    assert torch.equal(images, dm.test_set.images)
    assert [b["defect_type"] for b in batches] == [["good", "good", "square", "square"]]


def test_sixteen_bit_images_keep_their_brightness(tmp_path):
    dark, bright = np.full((8, 8), 257 * 20, np.uint16), np.full((8, 8), 65535, np.uint16)
    for name, array in (("dark.png", dark), ("bright.tif", bright)):
        Image.fromarray(array).save(tmp_path / name)
    # One fixed scale (65535 -> 255), not per-file stretching: a too-dark image must stay dark.
    assert read_image(tmp_path / "dark.png", 1, None).unique().tolist() == [20]
    assert read_image(tmp_path / "bright.tif", 3, 4).unique().tolist() == [255]


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
    assert dm.test_set.masks is None  # image labels only: no mask tensor is kept
    item = dm.test_set[len(dm.test_set) - 1]
    assert item["image"].dtype == torch.uint8 and item["label"] == 1 and item["mask"].sum() == 0

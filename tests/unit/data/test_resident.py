"""The device-resident path serves the batches the DataLoader serves, for every split and DDP share."""

from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader

from anomaly_ae.data.mvtec import MVTecDataModule
from anomaly_ae.data.resident import ResidentLoader
from tests.helpers import make_mvtec_tree


def datamodule(root, world: int = 1, rank: int = 0, **kwargs) -> MVTecDataModule:
    options = dict(
        image_size=32, batch_size=4, eval_batch_size=3, num_workers=0, val_fraction=0.25, cache=True
    )
    dm = MVTecDataModule(root=str(root), category="toy", **(options | kwargs))
    dm.setup()
    strategy = SimpleNamespace(root_device=torch.device("cpu"))
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank, strategy=strategy)
    return dm


def batches(loader, epoch: int = 0) -> list[dict]:
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):  # what Lightning does at every epoch start
        sampler.set_epoch(epoch)
    return list(loader)


def assert_same(resident: list[dict], loaded: list[dict]) -> None:
    assert len(resident) == len(loaded) > 0
    for ours, theirs in zip(resident, loaded, strict=True):
        assert ours.keys() == theirs.keys()
        for key in ("image", "mask", "label"):
            assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
        assert ours["path"] == theirs["path"] and ours["defect_type"] == theirs["defect_type"]


@pytest.mark.parametrize(("world", "rank"), [(1, 0), (2, 0), (2, 1)])
def test_every_split_gives_the_dataloaders_batches_in_every_epoch_and_share(mvtec_root, world, rank):
    fast = datamodule(mvtec_root, world, rank, resident="true")
    slow = datamodule(mvtec_root, world, rank, resident="false")
    train = fast.train_dataloader()
    assert isinstance(train, ResidentLoader) and isinstance(slow.train_dataloader(), DataLoader)
    for epoch in (0, 1, 5):  # the (seed, epoch) shuffle: another order every epoch, the same on both paths
        assert_same(batches(train, epoch), batches(slow.train_dataloader(), epoch))
    assert batches(train, 0)[0]["path"] != batches(train, 1)[0]["path"]
    assert len(train) == len(slow.train_dataloader())
    for split in ("val", "test"):
        resident, loaded = getattr(fast, f"{split}_dataloader")(), getattr(slow, f"{split}_dataloader")()
        assert isinstance(resident, ResidentLoader) and resident.dataset is fast.__dict__[f"{split}_set"]
        assert_same(batches(resident), batches(loaded))


def test_ground_truth_masks_at_their_file_size_are_kept_too(tmp_path):
    root = make_mvtec_tree(tmp_path, size=48)  # masks stay 48 px for eval_resolution=mask, images go to 32
    fast = datamodule(root, resident="true", eval_resolution="mask")
    slow = datamodule(root, resident="false", eval_resolution="mask")
    fast.test_set.original_masks = slow.test_set.original_masks = True  # as setup does for has_masks data
    resident = batches(fast.test_dataloader())
    assert resident[0]["mask"].shape[-2:] == (48, 48)
    assert_same(resident, batches(slow.test_dataloader()))


def test_auto_keeps_the_dataloader_on_cpus_and_true_falls_back_with_the_reason(mvtec_root):
    assert isinstance(datamodule(mvtec_root).train_dataloader(), DataLoader)  # auto on a CPU: as before
    with pytest.warns(UserWarning, match=r"training split stays on the DataLoader because it is not cached"):
        loader = datamodule(mvtec_root, resident="true", cache=False).train_dataloader()
    assert isinstance(loader, DataLoader)
    with pytest.warns(UserWarning, match=r"it takes 0 MB, over data.resident_max_mb=1e-06"):
        loader = datamodule(mvtec_root, resident="true", resident_max_mb=1e-6).val_dataloader()
    assert isinstance(loader, DataLoader)
    with pytest.raises(ValueError, match="data.resident='yes' is not one of auto, true, false"):
        datamodule(mvtec_root, resident="yes")


def test_resident_eval_batches_take_their_own_size(mvtec_root):
    dm = datamodule(mvtec_root, resident=True, resident_eval_batch_size=5)
    assert [len(b["path"]) for b in dm.test_dataloader()] == [5, 5, 2]  # 12 test images, the last batch kept
    assert all(len(b["path"]) == 4 for b in dm.train_dataloader())  # training keeps data.batch_size

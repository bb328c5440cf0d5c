"""Layout validation: every problem reported with its file, at setup and by the check command."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_ae.cli.check import main
from anomaly_ae.cli.train import fit
from anomaly_ae.data.check import DataError
from anomaly_ae.data.mvtec import MVTecDataModule
from tests.helpers import compose_config, make_mvtec_tree, tiny_overrides

FIX = "found before training; fix them and run again:"
FIX1 = FIX.replace("them", "it")


def datamodule(root: Path, **kwargs) -> MVTecDataModule:
    options = dict(image_size=32, batch_size=4, eval_batch_size=4, num_workers=0, val_fraction=0.25)
    return MVTecDataModule(root=str(root), category="toy", **(options | kwargs))


def problems_of(root: Path, **kwargs) -> str:
    """The DataError message that setup raises for the toy tree under root."""
    with pytest.raises(DataError) as error:
        datamodule(root, **kwargs).setup()
    return str(error.value)


def truncate(path: Path) -> None:
    """Keep the first half of a file, as an interrupted copy does."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_every_problem_is_reported_at_once_with_its_file(mvtec_root: Path) -> None:
    toy = mvtec_root / "toy"
    (toy / "ground_truth/square/000_mask.png").unlink()
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(toy / "ground_truth/square/001_mask.png")
    grey = np.zeros((32, 32), np.uint8)
    grey[4:8, 4:8] = 255
    grey[10:12, 10:12] = 128  # a soft edge: not binary
    Image.fromarray(grey).save(toy / "ground_truth/square/002_mask.png")
    truncate(toy / "train/good/003.png")
    (toy / "test/good/004.png").write_bytes(b"not a png")
    assert problems_of(mvtec_root) == (
        f"5 problems in MVTec AD category 'toy' in {mvtec_root}, {FIX}\n"
        f"  - {toy}/test/square/000.png: defective test image has no mask: expected "
        f"{toy}/ground_truth/square/000_mask.png\n"
        f"  - {toy}/test/good/004.png: not a readable image file (unknown or damaged format); replace or "
        "delete it\n"
        f"  - {toy}/train/good/003.png: image cannot be decoded (image file is truncated); replace or "
        "delete it\n"
        f"  - {toy}/ground_truth/square/001_mask.png: mask is 32x16 pixels but its image "
        f"{toy}/test/square/001.png is 32x32\n"
        f"  - {toy}/ground_truth/square/002_mask.png: mask is not binary: 3 distinct values (0, 128, 255); "
        "save it with only 0 (normal) and 255 (defect), as PNG (JPEG compression adds values)"
    )


def test_missing_train_good(mvtec_root: Path) -> None:
    for image in (mvtec_root / "toy/train/good").iterdir():
        image.unlink()
    (mvtec_root / "toy/train/good").rmdir()
    assert problems_of(mvtec_root) == (
        f"1 problem in MVTec AD category 'toy' in {mvtec_root}, {FIX1}\n"
        f"  - {mvtec_root}/toy/train/good: folder is missing: every category needs its normal training "
        "images there"
    )


def test_empty_category(tmp_path: Path) -> None:
    for folder in ("train/good", "test/good"):
        (tmp_path / "toy" / folder).mkdir(parents=True)
    assert problems_of(tmp_path) == (
        f"1 problem in MVTec AD category 'toy' in {tmp_path}, {FIX1}\n"
        f"  - {tmp_path}/toy: the category is empty: no images in train/good or test/"
    )


def test_missing_test_split(mvtec_root: Path) -> None:
    for folder in ("good", "square"):
        for image in (mvtec_root / "toy/test" / folder).iterdir():
            image.unlink()
    assert problems_of(mvtec_root) == (
        f"1 problem in MVTec AD category 'toy' in {mvtec_root}, {FIX1}\n"
        f"  - {mvtec_root}/toy/test: folder has no images: every category needs test/good and "
        "test/<defect type> folders of images"
    )


def test_mixed_modes_are_converted_with_one_warning(mvtec_root: Path) -> None:
    for i in range(3):  # three colour files among 33 grey ones
        path = mvtec_root / f"toy/train/good/{i:03d}.png"
        Image.open(path).convert("RGB").save(path)
    with pytest.warns(UserWarning) as caught:
        dm = datamodule(mvtec_root, cache=True)
        dm.setup()
    assert [str(w.message) for w in caught] == [
        f"MVTec AD category 'toy' in {mvtec_root}: images come in mixed modes (33 L, 3 RGB); all are "
        "converted to RGB (data.channels=3)"
    ]
    assert dm.channels == 3 and dm.train_set.images.shape[1:] == (3, 32, 32)
    with pytest.warns(UserWarning, match=r"\(33 L, 3 RGB\); all are converted to grayscale \(L\)"):
        datamodule(mvtec_root, channels=1).setup()


def test_uniform_modes_do_not_warn(mvtec_root: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        datamodule(mvtec_root).setup()


def test_check_command_prints_counts_then_every_problem(mvtec_root: Path, capsys) -> None:
    args = ["data=mvtec", f"data.root={mvtec_root}", "category=toy"]
    assert main(args) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("│")]
    assert rows == [
        ["│", "train", "│", "good", "│", "24", "│", "0", "│"],
        ["│", "test", "│", "good", "│", "6", "│", "0", "│"],
        ["│", "test", "│", "square", "│", "6", "│", "6", "│"],
        ["│", "all", "│", "│", "36", "│", "6", "│"],
    ]
    assert out.splitlines()[-1] == "OK: 36 images checked, no problems."

    (mvtec_root / "toy/ground_truth/square/000_mask.png").unlink()
    truncate(mvtec_root / "toy/test/good/000.png")
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 4  # the data has problems (docs/errors.md)
    captured = capsys.readouterr()
    assert "│ test  │ square      │      6 │     5 │" in captured.out
    assert captured.err.startswith(f"error: 2 problems in MVTec AD category 'toy' in {mvtec_root}, {FIX}\n")


def test_check_runs_as_a_subcommand(mvtec_root: Path) -> None:
    truncate(mvtec_root / "toy/train/good/007.png")
    args = ["data=mvtec", f"data.root={mvtec_root}", "category=toy"]
    done = subprocess.run(
        [sys.executable, "-m", "anomaly_ae", "check", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 4, done.stderr
    assert "│ train │ good        │     24 │     0 │" in done.stdout
    assert done.stderr == (
        f"error: 1 problem in MVTec AD category 'toy' in {mvtec_root}, {FIX1}\n"
        f"  - {mvtec_root}/toy/train/good/007.png: image cannot be decoded (image file is truncated); "
        "replace or delete it\n"
    )


def test_check_command_without_data_says_how_to_get_it(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["data=mvtec", f"data.root={tmp_path / 'none'}", "category=toy"])
    assert stopped.value.code == 5  # the data is not there (docs/errors.md)
    err = capsys.readouterr().err
    assert err.startswith(f"error: MVTec AD not found: {tmp_path / 'none' / 'toy'} does not exist.")
    assert "data=elpv" in err


def test_a_broken_file_stops_the_run_before_training(mvtec_root: Path, tmp_path: Path) -> None:
    truncate(mvtec_root / "toy/test/square/005.png")  # a test file: found even before the first epoch
    out = tmp_path / "run"
    with pytest.raises(DataError, match="(?s)1 problem in .*test/square/005.png: image cannot be decoded"):
        fit(compose_config(tiny_overrides(mvtec_root, out)))
    assert not (out / "checkpoints").exists()


def test_rgb_tree_checks_clean(tmp_path: Path) -> None:
    root = make_mvtec_tree(tmp_path, channels=3, n_train=8, n_good=2, n_defect=2)
    dm = datamodule(root, val_fraction=0.0)
    listing = dm.listing()
    assert dm.check(listing).channels == 3

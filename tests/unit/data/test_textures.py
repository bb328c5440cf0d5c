"""Tests for the embedded texture demo dataset and its defect generators."""

from __future__ import annotations

import hashlib
import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomaly_ae.data import textures
from anomaly_ae.data.defects import DEFECTS, commit
from anomaly_ae.data.textures import DEFECT_TYPES, MARKER, TEXTURES, build_textures, crop_plan

SMALL = dict(n_train=6, n_test_good=3, n_test_defect=4, size=64, seed=0)


@pytest.fixture(scope="module")
def small_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All categories at 64 px with a handful of images each."""
    return build_textures(tmp_path_factory.mktemp("textures"), **SMALL)


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by relative path."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _mtimes(root: Path) -> dict[str, int]:
    """Modification time of every file under root."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_same_seed_gives_identical_bytes(small_tree: Path, tmp_path: Path) -> None:
    again = build_textures(tmp_path / "again", **SMALL)
    assert _hashes(small_tree) == _hashes(again)
    assert len(_hashes(again)) == len(TEXTURES) * (6 + 3 + 2 * 4 * len(DEFECT_TYPES) + 1)


def test_other_seed_gives_other_images(small_tree: Path, tmp_path: Path) -> None:
    other = build_textures(tmp_path / "other", ["grass"], **{**SMALL, "seed": 1})
    a, b = _hashes(small_tree / "grass"), _hashes(other / "grass")
    assert a.keys() == b.keys()
    assert a["train/good/000.png"] != b["train/good/000.png"]


def test_layout_counts_and_stems(small_tree: Path) -> None:
    assert sorted(p.name for p in small_tree.iterdir()) == sorted(TEXTURES)  # no leftover temp dirs
    for category in TEXTURES:
        cat = small_tree / category
        assert (cat / MARKER).is_file()
        assert len(list((cat / "train" / "good").glob("*.png"))) == 6
        assert len(list((cat / "test" / "good").glob("*.png"))) == 3
        assert not (cat / "ground_truth" / "good").exists()
        assert sorted(p.name for p in (cat / "test").iterdir()) == sorted(["good", *DEFECT_TYPES])
        for name in DEFECT_TYPES:
            images = sorted(p.stem for p in (cat / "test" / name).glob("*.png"))
            masks = sorted(p.stem for p in (cat / "ground_truth" / name).glob("*.png"))
            assert len(images) == 4
            assert masks == [f"{stem}_mask" for stem in images]
            for stem in images:
                image = Image.open(cat / "test" / name / f"{stem}.png")
                mask = Image.open(cat / "ground_truth" / name / f"{stem}_mask.png")
                assert image.mode == "L"  # skimage's photos are grayscale and stay 1-channel
                assert image.size == mask.size == (64, 64)
                assert mask.mode == "L"
                assert set(np.unique(np.asarray(mask))) <= {0, 255}


def test_written_masks_are_exactly_the_changed_pixels(small_tree: Path) -> None:
    for category in TEXTURES:
        photo = textures.load_photo(category)
        plan = crop_plan(category, **SMALL)
        for name in DEFECT_TYPES:
            for i, crop in enumerate(plan[name]):
                base = textures._cut(photo, crop)[..., 0]
                image = np.asarray(Image.open(small_tree / category / "test" / name / f"{i:03d}.png"))
                mask = np.asarray(
                    Image.open(small_tree / category / "ground_truth" / name / f"{i:03d}_mask.png")
                )
                assert mask.any(), f"{category}/{name}/{i:03d} has no defect"
                np.testing.assert_array_equal(image != base, mask == 255)


@pytest.mark.parametrize("name", DEFECT_TYPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_defect_mask_exact_on_extreme_images(name: str, channels: int) -> None:
    rng = np.random.default_rng(0)
    # Flat black/white/mid images force rounding and clipping ties that must still count as changes.
    for level, seed in itertools.product([0, 1, 128, 254, 255], range(5)):
        base = np.full((48, 48, channels), level, np.uint8)
        base[::7] = rng.integers(0, 256, base[::7].shape)  # some texture so contrast changes matter
        image, mask = DEFECTS[name](base, np.random.default_rng(seed))
        assert image.dtype == np.uint8 and image.shape == base.shape
        assert mask.dtype == bool and mask.shape == base.shape[:2] and mask.any()
        np.testing.assert_array_equal((image != base).any(-1), mask)


def test_commit_nudges_ties_within_range() -> None:
    base = np.array([[[0], [255], [100], [100]]], np.uint8)
    target = np.array([[[-5.0], [300.0], [100.2], [140.0]]])
    region = np.array([[True, True, True, False]])
    image, mask = commit(base, target, region)
    assert image[..., 0].tolist() == [[1, 254, 101, 100]]
    np.testing.assert_array_equal(mask, region)


@pytest.mark.parametrize("size", [64, 256])
def test_train_and_test_crops_are_disjoint(size: int) -> None:
    for category in TEXTURES:
        height, width = textures.load_photo(category).shape[:2]
        boundary = textures.split_row(height, size)
        plan = crop_plan(category, n_train=50, n_test_good=10, n_test_defect=5, size=size)
        train = [c.box for c in plan["train"]]
        test = [c.box for key, crops in plan.items() if key != "train" for c in crops]
        assert len(train) == 50 and len(test) == 10 + 5 * len(DEFECT_TYPES)
        assert all(t >= 0 and x >= 0 and b <= boundary and r <= width for t, x, b, r in train)
        assert all(t >= boundary and x >= 0 and b <= height and r <= width for t, x, b, r in test)
        for (t1, l1, b1, r1), (t2, l2, b2, r2) in itertools.product(train, test):
            assert b1 <= t2 or b2 <= t1 or r1 <= l2 or r2 <= l1  # boxes do not intersect


def test_second_call_does_not_rewrite(tmp_path: Path) -> None:
    build_textures(tmp_path, ["gravel"], **SMALL)
    before = _mtimes(tmp_path)
    time.sleep(0.01)  # so a rewrite would show up in st_mtime_ns
    build_textures(tmp_path, ["gravel"], **SMALL)
    assert _mtimes(tmp_path) == before


def test_parameter_change_rebuilds(tmp_path: Path) -> None:
    build_textures(tmp_path, ["brick"], **SMALL)
    build_textures(tmp_path, ["brick"], **{**SMALL, "n_train": 4})
    assert len(list((tmp_path / "brick" / "train" / "good").glob("*.png"))) == 4
    assert '"n_train": 4' in (tmp_path / "brick" / MARKER).read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["brick"]  # old tree and temp dirs are gone


def test_interrupted_build_never_looks_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def failing_save(path: Path, image: np.ndarray) -> None:
        calls.append(path)
        if len(calls) > 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(textures, "_save_png", failing_save)
    with pytest.raises(KeyboardInterrupt):
        build_textures(tmp_path, ["grass"], **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown texture"):
        build_textures(tmp_path, ["carpet"], **SMALL)
    with pytest.raises(ValueError, match="disjoint"):
        build_textures(tmp_path, ["brick"], **{**SMALL, "size": 300})


def test_default_size_and_preview(tmp_path: Path) -> None:
    start = time.perf_counter()
    textures.main(
        ["--root", str(tmp_path / "data"), "--categories", "brick", "--preview", str(tmp_path / "p.png")]
    )
    assert time.perf_counter() - start < 15
    cat = tmp_path / "data" / "brick"
    assert len(list((cat / "train" / "good").glob("*.png"))) == 200
    assert len(list((cat / "test" / "good").glob("*.png"))) == 20
    assert all(len(list((cat / "test" / n).glob("*.png"))) == 10 for n in DEFECT_TYPES)
    assert Image.open(cat / "train" / "good" / "199.png").size == (256, 256)
    preview = Image.open(tmp_path / "p.png")
    assert preview.size[0] == 256 * (1 + 2 * len(DEFECT_TYPES)) and preview.size[1] > 256


def test_textures_data_config_builds_and_serves_the_category(tmp_path):
    from anomaly_ae.cli.train import fit
    from tests.helpers import compose_config

    overrides = [
        "data=textures", "category=gravel", f"data.root={tmp_path / 'tex'}", f"output_dir={tmp_path / 'run'}",
        "trainer=cpu", "logger=none", "trainer.max_epochs=1", "+trainer.limit_train_batches=1",
        "+trainer.limit_val_batches=1", "data.image_size=32", "model.width=8", "model.depth=2",
        "model.dilations=[1]", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
    ]  # fmt: skip
    metrics = fit(compose_config(overrides))
    assert (tmp_path / "tex/gravel/.complete").is_file()
    assert 0 <= metrics["test/pixel_aupro"] <= 1  # real masks: pixel metrics are computed


@pytest.mark.parametrize("name", DEFECT_TYPES)
def test_each_family_is_reproducible_from_its_seed(name: str) -> None:
    base = np.ascontiguousarray(textures.load_photo("gravel")[-128:, :128])
    a, mask_a = DEFECTS[name](base, np.random.default_rng(7))
    b, mask_b = DEFECTS[name](base, np.random.default_rng(7))
    c, _ = DEFECTS[name](base, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(mask_a, mask_b)
    assert not np.array_equal(a, c)


def _photo_crop(category: str = "gravel", size: int = 256) -> np.ndarray:
    return np.ascontiguousarray(textures.load_photo(category)[-size:, :size])


def test_smudge_removes_structure_but_keeps_brightness() -> None:
    from anomaly_ae.data.defects import smudge

    base = _photo_crop()
    for seed in range(5):
        image, mask = smudge(base, np.random.default_rng(seed))
        before, after = base[mask].astype(float), image[mask].astype(float)
        assert after.std() < 0.7 * before.std()  # detail and contrast are gone ...
        assert abs(after.mean() - before.mean()) < 10  # ... the mean tone is not (not a stain)


def test_misoriented_patch_is_the_texture_itself_not_a_tint() -> None:
    from anomaly_ae.data.defects import misoriented

    base = _photo_crop()
    for seed in range(5):
        image, mask = misoriented(base, np.random.default_rng(seed))
        assert 0.02 < mask.mean() < 0.25
        before, after = base[mask].astype(float), image[mask].astype(float)
        # Same material: grey-level statistics of the patch are those of the photo, pixels are not.
        assert abs(after.mean() - base.mean()) < 0.25 * base.std()
        assert 0.5 < after.std() / base.std() < 1.5
        assert np.abs(after - before).mean() > 0.3 * base.std()


def test_particles_are_a_cluster_of_small_compact_blobs_of_a_foreign_tone() -> None:
    from scipy import ndimage

    from anomaly_ae.data.defects import particles

    for channels, base in ((1, _photo_crop()), (3, np.repeat(_photo_crop("brick"), 3, axis=-1))):
        for seed in range(5):
            image, mask = particles(base, np.random.default_rng(seed))
            labels, count = ndimage.label(mask)
            assert 1 <= count <= 12
            assert mask.mean() < 0.06  # small: a few % of the image at most
            rows, cols = np.nonzero(mask)
            assert max(np.ptp(rows), np.ptp(cols)) < 0.6 * base.shape[0]  # one cluster, not scattered
            foreign = np.abs(image[mask].astype(float) - base[mask].astype(float)).mean()
            assert foreign > 40, (channels, seed, foreign)


def _fake_robosuite(root: Path, monkeypatch: pytest.MonkeyPatch, photos: dict[str, np.ndarray]) -> None:
    """A robosuite folder holding `photos` (file name -> pixels) on sys.path, pinned by their sha256.

    Its __init__ raises, like the real one without MuJoCo: the loader must find files without importing it.
    """
    import importlib
    import sys

    folder = root / "robosuite" / "models" / "assets" / "textures"
    folder.mkdir(parents=True)
    (root / "robosuite" / "__init__.py").write_text("raise ImportError('robosuite needs mujoco')\n")
    pins = {}
    for category, (name, _) in textures.MATERIALS.items():
        if name in photos:
            Image.fromarray(photos[name]).save(folder / name)
            pins[category] = (name, hashlib.sha256((folder / name).read_bytes()).hexdigest())
    monkeypatch.setattr(textures, "MATERIALS", {**textures.MATERIALS, **pins})
    monkeypatch.setattr(sys, "path", [str(root), *sys.path])
    importlib.invalidate_caches()


def test_material_photos_load_from_the_package_folder_without_importing_it(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (600, 300, 1), dtype=np.uint8), 4, axis=-1)  # RGBA, equal RGB
    colour = rng.integers(0, 256, (600, 300, 3), dtype=np.uint8)
    _fake_robosuite(tmp_path, monkeypatch, {"gray-felt.png": grey, "wood-tiles.png": colour})
    np.testing.assert_array_equal(textures.load_photo("felt"), grey[..., :1])  # no colour: 1 channel
    np.testing.assert_array_equal(textures.load_photo("parquet"), colour)
    root = build_textures(tmp_path / "tree", ["felt", "parquet"], **SMALL)
    assert Image.open(root / "felt" / "test" / "hole" / "000.png").mode == "L"
    assert Image.open(root / "parquet" / "test" / "hole" / "000.png").mode == "RGB"
    plan = crop_plan("parquet", **SMALL)
    np.testing.assert_array_equal(
        np.asarray(Image.open(root / "parquet" / "train" / "good" / "002.png")),
        textures._cut(colour, plan["train"][2]),
    )
    assert "robosuite" not in __import__("sys").modules


def test_material_photo_that_differs_from_the_pinned_one_is_refused(tmp_path, monkeypatch) -> None:
    _fake_robosuite(tmp_path, monkeypatch, {})
    folder = tmp_path / "robosuite" / "models" / "assets" / "textures"
    Image.fromarray(np.zeros((600, 600), np.uint8)).save(folder / "white-plaster.png")
    with pytest.raises(textures.DownloadError) as error:
        textures.load_photo("plaster")
    assert str(error.value) == (
        f"{folder / 'white-plaster.png'} is missing or not the photo of robosuite==1.5.2; reinstall it: "
        "pip install --no-deps --force-reinstall 'robosuite==1.5.2'"
    )


def test_materials_without_robosuite_name_the_install_command(monkeypatch) -> None:
    from anomaly_ae.optional import MissingExtra

    monkeypatch.setattr(textures.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingExtra) as error:
        textures.load_photo("wall")
    assert str(error.value) == (
        "robosuite is not installed; data=materials cuts its categories from the material photos in its "
        "wheel: pip install --no-deps 'robosuite==1.5.2'"
    )


def test_each_data_config_accepts_only_its_own_categories(tmp_path) -> None:
    from anomaly_ae.data.textures import MaterialsDataModule, TexturesDataModule

    materials = r"^data=materials category='brick' is not one of \['felt', 'parquet', 'plaster', 'wall'\]$"
    with pytest.raises(ValueError, match=materials):
        MaterialsDataModule(root=str(tmp_path), category="brick")
    with pytest.raises(ValueError, match=r"^data=textures category='felt' is not one of \['brick', 'grass'"):
        TexturesDataModule(root=str(tmp_path), category="felt")
    wall = MaterialsDataModule(root=str(tmp_path), category="wall")
    assert wall.where == f"materials demo category 'wall' in {tmp_path}"

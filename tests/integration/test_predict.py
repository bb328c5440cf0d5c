"""Detector API and the predict CLI, on a real checkpoint trained for one step at 32 px."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from PIL import Image
from torch.utils.data import DataLoader

from anomaly_ae import Detector
from anomaly_ae.cli.predict import main, predict_images
from anomaly_ae.data.images import as_float, read_image
from anomaly_ae.inference.detector import CheckpointError, model_input
from anomaly_ae.training.module import AnomalyAE
from tests.helpers import CONF_DIR, stripes

SIZE = 32


pytestmark = pytest.mark.usefixtures("one_thread")


def make_tiny_checkpoint(
    path: Path, model: dict | None = None, corruption: dict | None = None, **score
) -> Path:
    """A real AnomalyAE checkpoint: one training step, one validation pass that fits both thresholds.

    `model`: options added to the model config; `corruption`: the training corruption (None: a plain
    autoencoder). `score`: options added to the score config (normalize=pixel: that validation fits the
    statistics too).
    """
    rng = np.random.default_rng(0)
    images = [{"image": torch.from_numpy(stripes(SIZE, rng, 1))[None]} for _ in range(16)]
    module = AnomalyAE(
        model={
            "_target_": "anomaly_ae.model.autoencoder.ConvAutoencoder",
            "width": 8,
            "depth": 2,
            "dilations": [1, 2],
            **(model or {}),
        },
        corruption=corruption,
        optim={
            "lr": 1e-3,
            "betas": [0.9, 0.999],
            "weight_decay": 0.0,
            "scheduler": "none",
            "warmup_steps": 0,
        },
        score={"sigma": 1.0, "reduction": "max", "topk": 100, **score},
        loss={"clean_weight": None},
        augment={"hflip": False, "vflip": False, "rot90": False},
        in_channels=1,
        image_size=SIZE,
        has_masks=False,
    )
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    train, val = DataLoader(images[:8], batch_size=8), DataLoader(images[8:], batch_size=8)
    trainer.fit(module, train, val)
    trainer.save_checkpoint(path)
    return path


def cached_checkpoint(tmp_path_factory) -> Path:
    """The tiny checkpoint, made once per session: test_export.py finds it in the session's temp folder."""
    path = tmp_path_factory.getbasetemp() / "tiny_checkpoint" / "model.ckpt"
    if not path.is_file():
        path.parent.mkdir(exist_ok=True)
        make_tiny_checkpoint(path)
    return path


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return cached_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def detector(tiny_checkpoint) -> Detector:
    return Detector.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def module(tiny_checkpoint) -> AnomalyAE:
    return AnomalyAE.load_from_checkpoint(tiny_checkpoint, map_location="cpu", weights_only=True).eval()


def write_images(folder: Path) -> list[Path]:
    """Grey 8-bit at the model size, RGB 45x61 and 16-bit grey 40x40: every decoding path of a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    grey = stripes(SIZE, rng, 1)
    rgb = np.asarray(Image.fromarray(stripes(64, rng, 3)).resize((61, 45)))
    wide = (stripes(40, rng, 1).astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(grey).save(folder / "grey.png")
    Image.fromarray(rgb).save(folder / "colour.png")
    Image.fromarray(wide).save(folder / "wide16.png")
    return sorted(folder.glob("*.png"))


def test_checkpoint_thresholds_were_fitted(detector):
    assert np.isfinite(detector.image_threshold) and np.isfinite(detector.pixel_threshold)
    assert (detector.in_channels, detector.image_size) == (1, SIZE)


def test_every_input_kind_gives_maps_and_masks_at_its_original_size(detector, tmp_path):
    paths = write_images(tmp_path)
    rng = np.random.default_rng(2)
    inputs = [
        paths[0],
        str(paths[1]),
        Image.open(paths[2]),
        rng.integers(0, 256, (50, 70), dtype=np.uint8),
        rng.integers(0, 65536, (30, 20, 3), dtype=np.uint16),
        rng.random((33, 35, 1)).astype(np.float32),
        torch.rand(3, 24, 40),
        torch.rand(2, 1, SIZE, SIZE),  # a batch: two images
    ]
    result = detector.predict(inputs, batch_size=3)
    sizes = [
        (45, 61),
        (SIZE, SIZE),
        (40, 40),
        (50, 70),
        (30, 20),
        (33, 35),
        (24, 40),
        (SIZE, SIZE),
        (SIZE, SIZE),
    ]
    assert len(result) == 9 and result.scores.shape == (9,)
    assert [tuple(m.shape) for m in result.maps] == sizes
    assert [tuple(m.shape) for m in result.masks] == sizes
    assert torch.equal(result.labels, result.scores >= detector.image_threshold)
    for amap, mask in zip(result.maps, result.masks, strict=True):
        assert mask.dtype == torch.bool and torch.equal(mask, amap >= detector.pixel_threshold)


def test_files_are_scored_exactly_as_the_training_pipeline_decodes_them(detector, module, tmp_path):
    paths = write_images(tmp_path)
    images = as_float(torch.stack([read_image(p, 1, SIZE) for p in paths]))
    maps, scores = module(images)
    result = detector.predict(paths)
    assert torch.allclose(result.scores, scores, atol=1e-6)
    grey = paths.index(tmp_path / "grey.png")  # at the model size: the map is the module's map
    assert torch.allclose(result.maps[grey], maps[grey], atol=1e-6)


def test_maps_are_upsampled_bilinearly_to_the_input_size(detector, module):
    image = torch.rand(1, 64, 96)
    resized = F.interpolate(image[None], size=(SIZE, SIZE), mode="bilinear", antialias=True)
    maps, scores = module(resized)
    result = detector.predict(image)
    expected = F.interpolate(maps[:, None], size=(64, 96), mode="bilinear")[0, 0]
    assert torch.allclose(result.maps[0], expected, atol=1e-6)
    assert torch.allclose(result.scores, scores, atol=1e-6)


def test_colour_inputs_become_the_grey_image_the_model_expects(detector):
    grey = stripes(SIZE, np.random.default_rng(3), 3).astype(np.float32)
    rgb = Image.fromarray((grey * [1.0, 0.6, 0.3]).astype(np.uint8))  # a real colour image
    as_array = np.asarray(rgb).astype(np.float32) / 255
    same = detector.predict([rgb, rgb.convert("L"), as_array])
    assert same.scores[0] == same.scores[1]
    assert torch.allclose(same.scores[2], same.scores[1], atol=1e-2)  # float luma vs PIL's 8-bit rounding


def test_grey_inputs_are_repeated_for_a_colour_model():
    image, original = model_input(torch.rand(1, 20, 30), 3, 16, torch.device("cpu"))
    assert image.shape == (3, 16, 16) and original == (20, 30)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    rgba, _ = model_input(np.zeros((8, 8, 4), np.uint8), 3, 8, torch.device("cpu"))
    assert rgba.shape == (3, 8, 8)


def test_out_of_range_floats_and_unknown_objects_are_refused(detector):
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        detector.predict(torch.full((1, 8, 8), 255.0))
    with pytest.raises(TypeError, match="cannot predict on a dict"):
        detector.predict({"image": 1})


def test_foreign_and_outdated_checkpoints_give_a_clear_error(tiny_checkpoint, tmp_path):
    good = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    hparams = good["hyper_parameters"]
    cases = {
        "weights.ckpt": ({"conv.weight": torch.zeros(1)}, "no 'state_dict' and 'hyper_parameters'"),
        "old.ckpt": (
            {**good, "hyper_parameters": {k: v for k, v in hparams.items() if k != "image_size"}},
            "lacks image_size",
        ),
        "other_model.ckpt": (
            {**good, "hyper_parameters": {**hparams, "model": {"_target_": "timm.create_model"}}},
            "not an anomaly_ae model",
        ),
        "renamed_layer.ckpt": (
            {**good, "state_dict": {k.replace("stem", "first"): v for k, v in good["state_dict"].items()}},
            "does not match this version",
        ),
        "pickled.ckpt": (Path("."), "weights_only=True refuses"),  # any non-tensor Python object
    }
    for name, (content, reason) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(CheckpointError, match=reason) as error:
            Detector.load(tmp_path / name, device="cpu")
        assert name in str(error.value)
    (tmp_path / "text.ckpt").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="text.ckpt is not a PyTorch checkpoint"):
        Detector.load(tmp_path / "text.ckpt")
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        Detector.load(tmp_path / "missing.ckpt")


def compose_predict(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="predict", overrides=overrides)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_predict_cli_writes_map_overlay_mask_and_csv_per_image(
    tiny_checkpoint, detector, tmp_path, monkeypatch
):
    paths = write_images(tmp_path / "in")
    out = tmp_path / "out"
    argv = [
        "predict",
        f"checkpoint={tiny_checkpoint}",
        f"input={tmp_path / 'in'}",
        f"output={out}",
        "device=cpu",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    main()  # @hydra.main reads sys.argv, as `python -m anomaly_ae.cli.predict ...` does
    rows = read_rows(out / "predictions.csv")
    assert list(rows[0]) == ["path", "score", "label", "threshold"]
    expected = detector.predict(paths)
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    assert np.allclose([float(r["score"]) for r in rows], expected.scores.numpy(), atol=1e-6)
    assert [int(r["label"]) for r in rows] == expected.labels.long().tolist()
    for path, amap, mask in zip(paths, expected.maps, expected.masks, strict=True):
        size = Image.open(path).size
        saved = np.load(out / f"{path.stem}_map.npy")
        assert saved.dtype == np.float32 and np.allclose(saved, amap.numpy(), atol=1e-6)
        assert Image.open(out / f"{path.stem}_overlay.png").size == size
        assert Image.open(out / f"{path.stem}_overlay.png").mode == "RGB"
        saved_mask = np.asarray(Image.open(out / f"{path.stem}_mask.png"))
        assert saved_mask.shape == size[::-1] and np.array_equal(saved_mask > 0, mask.numpy())


def test_predict_png16_maps_carry_their_scale_and_globs_select_files(tiny_checkpoint, detector, tmp_path):
    paths = write_images(tmp_path / "in")
    out = tmp_path / "out"
    cfg = compose_predict(
        [f"checkpoint={tiny_checkpoint}", f"input={tmp_path}/in/*e*.png", f"output={out}", "map_format=png16"]
    )
    rows = predict_images(cfg.copy())
    chosen = [p for p in paths if "e" in p.name]  # grey.png and wide16.png; colour.png has no e
    assert [r["path"] for r in rows] == [str(p) for p in chosen]
    for row, amap in zip(rows, detector.predict(chosen).maps, strict=True):
        stored = np.asarray(Image.open(out / f"{Path(row['path']).stem}_map.png")).astype(np.float64)
        assert np.allclose(stored / 65535 * row["map_scale"], amap.numpy(), atol=row["map_scale"] / 65535)
    assert "map_scale" in read_rows(out / "predictions.csv")[0]


def test_predict_names_an_input_that_matches_nothing(tiny_checkpoint, tmp_path):
    cfg = compose_predict(
        [f"checkpoint={tiny_checkpoint}", f"input={tmp_path}/none/*.png", f"output={tmp_path}"]
    )
    with pytest.raises(FileNotFoundError, match="matches no image"):
        predict_images(cfg)

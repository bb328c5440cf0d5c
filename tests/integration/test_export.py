"""ONNX and .pt2 export: PyTorch's maps and scores at any batch size, from Detector and predict too."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from scipy import ndimage

from anomaly_ae.cli.export import main
from anomaly_ae.cli.predict import predict_images
from anomaly_ae.data.elpv import elpv_labels
from anomaly_ae.inference.detector import METADATA_KEY, Detector, model_input
from anomaly_ae.inference.export import export
from anomaly_ae.model.scorer import AnomalyScorer
from anomaly_ae.model.scoring import anomaly_map, smooth, smoothing_radius
from anomaly_ae.training.module import AnomalyAE
from tests.integration.test_predict import (
    cached_checkpoint,
    compose_predict,
    make_tiny_checkpoint,
    write_images,
)

TOLERANCE = 1e-4  # max abs difference allowed between runtimes, for maps and scores
SIZE = 32  # of the tiny checkpoints


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return cached_checkpoint(tmp_path_factory)


@pytest.fixture(scope="module")
def module(tiny_checkpoint) -> AnomalyAE:
    return AnomalyAE.load_from_checkpoint(tiny_checkpoint, map_location="cpu", weights_only=True).eval()


@pytest.fixture(scope="module")
def onnx_file(tiny_checkpoint, tmp_path_factory) -> Path:
    return export(tiny_checkpoint, "onnx", tmp_path_factory.mktemp("export") / "model.onnx")


def elpv_cells(count: int = 4) -> list[Path]:
    """A few real solar cells (300x300 grey), half of them defective."""
    root, rows = elpv_labels()
    normal = [root / p for p, probability, _ in rows if probability == 0][: count // 2]
    defective = [root / p for p, probability, _ in rows if probability == 1][: count - count // 2]
    return normal + defective


def real_batch(module: AnomalyAE) -> torch.Tensor:
    size = module.hparams.image_size
    return torch.stack([model_input(p, 1, size, torch.device("cpu"))[0] for p in elpv_cells()])


@pytest.mark.parametrize("reduction", ["max", "topk_mean", "mean"])
@pytest.mark.parametrize("sigma", [0.0, 1.0, 4.0])
def test_precomputed_smoothing_kernel_equals_a_scipy_gaussian_filter(module, reduction, sigma):
    scorer = AnomalyScorer(module.autoencoder, sigma, reduction, topk=10, image_size=32)  # kernel buffer
    images = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        maps, scores = scorer(images)
        residual = anomaly_map(images, module.autoencoder(images), 0)
    assert torch.allclose(maps, smooth(residual, sigma), atol=1e-6)  # kernel computed per call
    # Slow reference: scipy's Gaussian filter (truncate 4, reflect = scipy's "reflect" minus the edge: mirror)
    expected = np.stack(
        [
            ndimage.gaussian_filter(r, sigma, mode="mirror", radius=smoothing_radius(sigma, 32))
            for r in residual.numpy()
        ]
    )
    assert np.abs(maps.numpy() - expected).max() < 1e-6 if sigma else torch.equal(maps, residual)
    assert torch.allclose(
        scores, AnomalyScorer(module.autoencoder, sigma, reduction, topk=10).image_score(maps)
    )


def test_onnx_runtime_matches_pytorch_on_random_and_real_images_at_any_batch_size(module, onnx_file):
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    batches = [torch.rand(n, 1, 32, 32) for n in (1, 3, 5)] + [real_batch(module)]  # exported with batch 2
    for images in batches:
        maps, scores = session.run(["maps", "scores"], {"images": images.numpy()})
        with torch.no_grad():
            expected_maps, expected_scores = module(images)
        assert maps.shape == (len(images), 32, 32) and scores.shape == (len(images),)
        assert np.abs(maps - expected_maps.numpy()).max() < TOLERANCE
        assert np.abs(scores - expected_scores.numpy()).max() < TOLERANCE


def test_onnx_file_carries_the_input_contract_and_thresholds(module, onnx_file):
    model = onnx.load(str(onnx_file))
    onnx.checker.check_model(model)
    meta = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    assert (meta["image_size"], meta["in_channels"]) == (32, 1)
    assert meta["image_threshold"] == pytest.approx(float(module.image_threshold))
    assert meta["pixel_threshold"] == pytest.approx(float(module.pixel_threshold))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value  # symbolic: any batch size


def test_detector_from_onnx_and_pt2_matches_the_checkpoint(tiny_checkpoint, onnx_file, tmp_path):
    program = export(tiny_checkpoint, "pt2", tmp_path / "model.pt2")
    images = [*elpv_cells(), *write_images(tmp_path / "in"), torch.rand(2, 1, 50, 40)]
    reference = Detector.load(tiny_checkpoint, device="cpu").predict(images)
    for exported in (onnx_file, program):
        result = Detector.load(exported, device="cpu").predict(images)
        assert (result.image_threshold, result.pixel_threshold) == pytest.approx(
            (reference.image_threshold, reference.pixel_threshold)
        )
        assert (result.scores - reference.scores).abs().max() < TOLERANCE
        assert torch.equal(result.labels, reference.labels)
        for amap, expected in zip(result.maps, reference.maps, strict=True):
            assert amap.shape == expected.shape and (amap - expected).abs().max() < TOLERANCE


def test_predict_cli_runs_from_the_exported_file_with_the_same_results(tiny_checkpoint, onnx_file, tmp_path):
    write_images(tmp_path / "in")
    rows = {}
    for name, checkpoint in (("ckpt", tiny_checkpoint), ("onnx", onnx_file)):
        overrides = [f"checkpoint={checkpoint}", f"input={tmp_path / 'in'}", f"output={tmp_path / name}"]
        rows[name] = predict_images(compose_predict([*overrides, "progress=false"]))
    assert [r["path"] for r in rows["onnx"]] == [r["path"] for r in rows["ckpt"]]
    for got, expected in zip(rows["onnx"], rows["ckpt"], strict=True):
        assert abs(got["score"] - expected["score"]) < TOLERANCE and got["label"] == expected["label"]
        stem = Path(got["path"]).stem
        maps = [np.load(tmp_path / name / f"{stem}_map.npy") for name in ("ckpt", "onnx")]
        assert np.abs(maps[0] - maps[1]).max() < TOLERANCE


def test_export_cli_writes_pt2_and_reports_the_difference(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    output = tmp_path / "cli.pt2"
    argv = ["export", f"checkpoint={tiny_checkpoint}", "format=pt2", f"output={output}"]
    monkeypatch.setattr(sys, "argv", argv)
    main()
    printed = capsys.readouterr().out
    assert output.is_file() and "max abs difference to the checkpoint" in printed
    assert Detector.load(output, device="cpu").image_size == 32


SCORE_OPTIONS = {
    "normalize": {"normalize": "pixel"},
    "flip": {"flip_average": True},
    "multiscale": {"residual": "multiscale"},
    "gradient": {"residual": "gradient", "normalize": "pixel"},
    "squared_and_gradient": {"residual": "squared_and_gradient", "normalize": "pixel"},
    "ssim": {"residual": "ssim", "normalize": "pixel"},
    "squared_and_ssim": {"residual": "squared_and_ssim", "normalize": "pixel"},
    "squared_gradient_and_ssim": {"residual": "squared_gradient_and_ssim", "normalize": "pixel"},
    "squared_gradient_and_learned": {"residual": "squared_gradient_and_learned", "normalize": "pixel"},
}
STRUCTURED = {"_target_": "anomaly_ae.corruption.structured.StructuredCorruption"}


@pytest.mark.parametrize("option", SCORE_OPTIONS)
def test_score_options_are_exported_with_the_model(option, tmp_path):
    corruption = STRUCTURED if "learned" in option else None  # the segmenter learns the corruption's masks
    checkpoint = make_tiny_checkpoint(tmp_path / "model.ckpt", corruption=corruption, **SCORE_OPTIONS[option])
    reference = AnomalyAE.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    if option == "normalize":  # fitted by the checkpoint's validation pass, so the parity below covers them
        assert not torch.equal(reference.scorer.residual_mean, torch.zeros(SIZE, SIZE))
    plain = AnomalyScorer(reference.autoencoder, sigma=1.0, image_size=SIZE).eval()
    images = torch.cat([torch.rand(3, 1, SIZE, SIZE), real_batch(reference)])  # batch 7: not the traced 2
    with torch.no_grad():
        expected_maps, expected_scores = reference(images)
        # The option changes the maps by far more than the parity tolerance, so parity below tests it.
        assert (expected_maps - plain(images)[0]).abs().max() > 10 * TOLERANCE
    tolerance = TOLERANCE
    if "ssim" in option:
        # SSIM's local variance is a difference of two filtered moments: in float32 the runtimes' rounding
        # (~1e-7 of E[x^2]) is divided by var + C2 on flat regions, ~1e-5 of the [0, 1] map, and the z-score
        # multiplies it by 1 / std: relative to the map's scale (z-scores up to ~1000 for this 1-step model).
        tolerance = TOLERANCE * max(1.0, float(expected_maps.abs().max()))
    onnx_file = export(checkpoint, "onnx", tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    maps, scores = session.run(["maps", "scores"], {"images": images.numpy()})
    assert np.abs(maps - expected_maps.numpy()).max() < tolerance
    assert np.abs(scores - expected_scores.numpy()).max() < tolerance
    program = torch.export.load(str(export(checkpoint, "pt2", tmp_path / "model.pt2")))
    with torch.no_grad():
        maps, scores = program.module()(images)
    assert (maps - expected_maps).abs().max() < tolerance
    assert (scores - expected_scores).abs().max() < tolerance
    meta = json.loads({p.key: p.value for p in onnx.load(str(onnx_file)).metadata_props}[METADATA_KEY])
    assert {k: meta["score"][k] for k in SCORE_OPTIONS[option]} == SCORE_OPTIONS[option]


def test_spatial_skip_gates_are_exported_with_parity(tmp_path):
    checkpoint = make_tiny_checkpoint(tmp_path / "model.ckpt", model={"skip_gate": "spatial"})
    reference = AnomalyAE.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    with torch.no_grad():  # a head that really varies per pixel, not the zero-initialised one
        for skip in reference.autoencoder.skips:
            skip.where[-1].weight.normal_(0, 0.5)
    saved = torch.load(checkpoint, weights_only=True)
    torch.save({**saved, "state_dict": reference.state_dict()}, checkpoint)
    images = torch.cat([torch.rand(3, 1, SIZE, SIZE), real_batch(reference)])
    skip = reference.autoencoder.skips[0]
    with torch.no_grad():
        expected_maps, expected_scores = reference(images)
        features = torch.rand(2, skip.logit.shape[1], 8, 8)
        assert skip.gate(features, features).std(dim=(-2, -1)).min() > 1e-3  # the gate varies per pixel
    onnx_file = export(checkpoint, "onnx", tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    maps, scores = session.run(["maps", "scores"], {"images": images.numpy()})
    assert np.abs(maps - expected_maps.numpy()).max() < TOLERANCE
    assert np.abs(scores - expected_scores.numpy()).max() < TOLERANCE


def test_export_refuses_an_unknown_format(tiny_checkpoint):
    with pytest.raises(ValueError, match="format=tflite is not one of onnx, pt2"):
        export(tiny_checkpoint, "tflite")

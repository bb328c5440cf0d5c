"""The two explanation CLIs end to end, on a checkpoint trained for two steps on the toy tree."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from anomaly_ae.cli.explain import explain_images
from anomaly_ae.cli.main import main as cli_main
from anomaly_ae.cli.train import fit
from anomaly_ae.data.images import read_image
from anomaly_ae.explain.evaluate import evaluate
from anomaly_ae.explain.relevance import Method, explain, lrp_scorer
from anomaly_ae.inference.loading import load_scorer
from anomaly_ae.training.module import AnomalyAE
from tests.helpers import CONF_DIR, compose_config, make_mvtec_tree, tiny_overrides

METHODS = sorted(p.stem for p in (Path(CONF_DIR) / "explain").glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """(data root, checkpoint) of a two-step training run at 32 px."""
    root = make_mvtec_tree(tmp_path_factory.mktemp("data"))
    out = tmp_path_factory.mktemp("run")
    fit(
        compose_config(tiny_overrides(root, out) + ["+trainer.limit_train_batches=2", "trainer.max_epochs=1"])
    )
    return root, out / "checkpoints" / "last.ckpt"


def compose_named(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def test_every_method_file_composes_and_explains(tiny_run):
    root, checkpoint = tiny_run
    scorer = load_scorer(checkpoint, torch.device("cpu"))
    images = torch.stack([read_image(root / "toy/test/square/000.png", 1, 32)]).float() / 255
    for name in METHODS:
        cfg = compose_named("explain", [f"checkpoint={checkpoint}", "input=x", f"explain={name}"])
        method = Method.from_config(cfg.explain)
        assert method.name == name
        assert explain(scorer, images, method).heatmap.isfinite().all()


def test_explain_writes_panels_relevance_and_the_trained_modules_scores(tiny_run, tmp_path, capsys):
    root, checkpoint = tiny_run
    folder = root / "toy" / "test" / "square"
    cfg = compose_named(
        "explain", [f"checkpoint={checkpoint}", f"input={folder}", f"output={tmp_path}", "batch_size=4"]
    )
    rows = explain_images(cfg)
    paths = sorted(folder.glob("*.png"))
    assert [Path(row["image"]).name for row in rows] == [p.name for p in paths]
    assert Image.open(tmp_path / "000.png").size == (3 * 32, 14 + 32)  # input | anomaly map | relevance
    assert np.load(tmp_path / "000_relevance.npy").shape == (32, 32)
    module = AnomalyAE.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).eval()
    images = torch.stack([read_image(p, 1, 32) for p in paths]).float() / 255
    # The default score.residual=squared_gradient_and_learned: LRP explains its squared term, and says so.
    assert module.scorer.residual_kind == "squared_gradient_and_learned"
    assert capsys.readouterr().out.splitlines()[-1] == (
        "LRP explains the squared component of score.residual=squared_gradient_and_learned: the score column "
        "is that component's image score (the map in each panel is the model's own)"
    )
    with torch.no_grad():
        expected = lrp_scorer(module.scorer)(images)[1]
        assert (expected - module(images)[1]).abs().max() > 1e-3  # a different score than the model's
    torch.testing.assert_close(torch.tensor([row["score"] for row in rows]), expected, rtol=1e-5, atol=1e-7)
    with open(tmp_path / "scores.csv") as file:
        assert len(list(csv.DictReader(file))) == len(paths)


def test_explain_region_box_from_the_command_line(tiny_run, tmp_path):
    root, checkpoint = tiny_run
    image = root / "toy" / "test" / "square" / "001.png"
    arguments = [f"checkpoint={checkpoint}", f"input={image}", f"output={tmp_path}", "explain=zplus"]
    # What `anomaly-ae explain ...` runs: the console script's dispatcher reads sys.argv.
    assert cli_main(["explain", *arguments, "region=[0,0,16,16]", "device=cpu"]) == 0
    assert (tmp_path / "001.png").is_file() and (tmp_path / "scores.csv").is_file()


def test_evaluate_writes_tables_and_grid(tiny_run, tmp_path):
    root, checkpoint = tiny_run
    kept = ["epsilon_plus_flat", "root", "residual"]
    dropped = [f"~explain@methods.{m}" for m in METHODS if m not in kept]
    overrides = [f"checkpoint={checkpoint}", f"data.root={root}", f"output={tmp_path}", "figure_rows=2"]
    summary = evaluate(compose_named("explain_evaluate", overrides + dropped + ["device=cpu"]))
    assert [row["method"] for row in summary] == kept
    for row in summary:  # category and image size came from the training run
        assert row["category"] == "toy" and row["images"] == 6
        for key in ("mass_accuracy_mean", "rank_accuracy_mean", "pointing_game_mean"):
            assert 0 <= row[key] <= 1
    assert "| epsilon_plus_flat |" in (tmp_path / "explain_results.md").read_text()
    with open(tmp_path / "explain_per_image.csv") as file:
        assert len(list(csv.DictReader(file))) == 6 * len(kept)
    grid = Image.open(tmp_path / "explain_grid.png")
    assert grid.size == (128 * 5, 14 + 128 * 2)  # input, mask, anomaly map and the two LRP methods

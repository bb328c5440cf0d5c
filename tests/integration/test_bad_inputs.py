"""A catalogue of bad inputs: each gets one line `error: ...`, its documented exit code (docs/errors.md),
no traceback, and leaves every file outside the command's own output as it was.

In-process through `anomaly_ae.cli.main.main` (the `anomaly-ae` console script); a few subprocesses at
the end check the real entry points and the HYDRA_FULL_ERROR=1 switch.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_ae.cli.main import main
from anomaly_ae.corruption.structured import SHAPES  # grows as shapes are added: the message lists them all
from tests.helpers import make_mvtec_tree, stripes, tiny_overrides
from tests.integration.test_predict import cached_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


class Evil:
    """Unpickling this would call os.getcwd: harmless, yet a global that weights_only=True must refuse."""

    def __reduce__(self):
        return (os.getcwd, ())


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Data trees, a real checkpoint, bad checkpoints and user images, all under one folder."""
    base = tmp_path_factory.mktemp("bad_inputs")
    make_mvtec_tree(base / "mvtec")
    make_mvtec_tree(base / "one", n_train=1)
    truncated = make_mvtec_tree(base / "broken") / "toy/train/good/007.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    jpeg_masks = make_mvtec_tree(base / "jpegmask") / "toy/ground_truth/square"
    Image.open(jpeg_masks / "000_mask.png").save(jpeg_masks / "000_mask.jpg")
    (jpeg_masks / "000_mask.png").unlink()
    (base / "model.ckpt").write_bytes(cached_checkpoint(tmp_path_factory).read_bytes())
    (base / "text.ckpt").write_text("not a checkpoint\n")
    torch.save({"state_dict": Evil()}, base / "evil.ckpt")  # pickles the call to os.getcwd
    torch.save({"weights": torch.zeros(2)}, base / "foreign.ckpt")
    (base / "model.onnx").write_bytes(b"an earlier export, to be kept")
    photos = base / "photos"
    photos.mkdir()
    Image.fromarray(stripes(32, np.random.default_rng(0), 1)).save(photos / "a.png")
    (photos / "a_overlay.png").write_bytes(b"the user's own overlay, to be kept")
    return base


def snapshot(root: Path, skip: Path | None) -> dict[str, str]:
    """sha256 of every file under root, except those under `skip` (the command's own output)."""
    return {
        str(path): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and (skip is None or not path.is_relative_to(skip))
    }


def train(root: str = "mvtec", *extra: str) -> list[str]:
    return ["train", *tiny_overrides(Path("{w}") / root, Path("{w}/out")), "hydra.run.dir={w}/out", *extra]


CKPT, TEXT, EVIL = "checkpoint={w}/model.ckpt", "checkpoint={w}/text.ckpt", "checkpoint={w}/evil.ckpt"
PREDICT = ["predict", "input={w}/photos/a.png", "output={w}/out", "progress=false"]
EXPLAIN = ["explain", "input={w}/photos/a.png", "output={w}/out", "image_size=32"]
CHECK = ["check", "data=mvtec", "category=toy"]
BROKEN = (
    "error: 1 problem in MVTec AD category 'toy' in {w}/broken, found before training; fix it and run again:"
)
NOT_A_CKPT = "error: checkpoint {w}/text.ckpt is not a PyTorch checkpoint"
EVIL_LINE = (
    "error: checkpoint {w}/evil.ckpt holds a Python object (posix.getcwd) that weights_only=True refuses to "
    "load: it was not written by `anomaly-ae train`"
)
URL = (
    "https://www.mydrive.ch/shares/150996/b52ecdcbf521176e9db9c731f2304b27/download/420938113-1629960298/"
    "mvtec_anomaly_detection.tar.xz"
)
SHA = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"
NO_DATA = (
    f"error: MVTec AD not found: {{w}}/missing/toy does not exist. To get it, set data.download=true to "
    f"download {URL} into {{w}} and extract it as {{w}}/missing (checked against sha256 {SHA}); or "
    f"download that URL by hand, check that its sha256 is {SHA}, and extract it so that {{w}}/missing holds "
    "one folder per category (carpet/, grid/, ..., zipper/). Licence: CC BY-NC-SA 4.0, non-commercial. "
    "Without it, data=elpv runs the offline demo."
)


def refused(key: str, value: str, allowed: str) -> str:
    """The first line for a value out of its range."""
    return f"error: {key}={value} is not allowed: {key} must be {allowed}" + SET_IT


SET_IT = "; set it on the command line or in the config file"

# (id, argv, exit code, exact first line of stderr); {w} is the catalogue's folder, {w}/out the output.
CASES = [
    ("train-sigma", train("mvtec", "score.sigma=-1"), 2,
     "error: score.sigma=-1 is not allowed: score.sigma must be a number >= 0 (pixels of Gaussian "
     "smoothing; 0 turns smoothing off)" + SET_IT),
    ("train-reduction", train("mvtec", "score.reduction=median"), 2,
     refused("score.reduction", "median", "one of max, topk_mean, mean")),
    ("train-normalize", train("mvtec", "score.normalize=zscore"), 2,
     refused("score.normalize", "zscore", "one of none, pixel")),
    ("train-components-unnormalised",
     train("mvtec", "score.residual=squared_and_gradient", "score.normalize=none"), 2,
     "error: score.residual=squared_and_gradient averages z-scores of its maps and needs "
     "score.normalize=pixel; got score.normalize=none: set score.normalize=pixel or choose another "
     "score.residual"),
    ("train-learned-without-corruption",
     train("mvtec", "score.residual=squared_gradient_and_learned", "corruption=none"), 2,
     "error: score.residual=squared_gradient_and_learned trains its segmenter on the corruption's masks, but "
     "corruption=none: choose a corruption (corruption=families) or another score.residual"),
    ("train-learned-unnormalised", train("mvtec", "score.residual=learned", "score.normalize=none"), 2,
     "error: score.residual=learned z-scores the segmenter's logits on clean images and needs "
     "score.normalize=pixel; got score.normalize=none: set score.normalize=pixel"),
    ("train-textures-category", [*train("mvtec", "data=textures"), "category=wood"], 2,
     "error: data=textures category='wood' is not one of ['brick', 'grass', 'gravel'] (in data); set it on "
     "the command line or in the config file"),
    ("train-topk", train("mvtec", "score.topk=0"), 2,
     refused("score.topk", "0", "an integer >= 1")),
    ("train-p-corrupt", train("mvtec", "corruption.p_corrupt=2"), 2,
     refused("corruption.p_corrupt", "2", "a number in [0, 1]")),
    ("train-max-size", train("mvtec", "corruption.max_size=1.5"), 2,
     refused("corruption.max_size", "1.5", "a number in (0, 1]")),
    ("train-min-above-max", train("mvtec", "corruption.min_size=0.5", "corruption.max_size=0.3"), 2,
     "error: corruption.min_size=0.5 is above corruption.max_size=0.3: lower min_size or raise max_size"),
    ("train-shapes", train("mvtec", "corruption.shapes=[star]"), 2,
     refused("corruption.shapes", "['star']", f"a non-empty list of {', '.join(SHAPES)}")),
    ("train-threshold", train("mvtec", "eval.threshold=bogus"), 2,
     refused("eval.threshold", "bogus", "one of f1, quantile")),
    ("train-quantile", train("mvtec", "eval.quantile=2"), 2,
     refused("eval.quantile", "2", "a number in (0, 1)")),
    ("train-max-fpr", train("mvtec", "eval.max_fpr=0"), 2,
     refused("eval.max_fpr", "0", "a number in (0, 1]")),
    ("train-size-multiple", train("mvtec", "data.image_size=100", "model.depth=4"), 2,
     "error: data.image_size=100 is not a multiple of 2**model.depth = 16 (the autoencoder halves the image "
     "model.depth=4 times and doubles it back): use data.image_size=96 or 112"),
    ("train-size-huge", train("mvtec", "data.image_size=100000"), 2,
     "error: data.image_size=100000 is not allowed: data.image_size must be an integer in [1, 4096] (tile or "
     "resize larger images first: 4096 px needs GBs per image)" + SET_IT),
    ("train-opaque-fraction", train("mvtec", "corruption.opaque_fraction=2"), 2,
     refused("corruption.opaque_fraction", "2", "a number in [0, 1]")),
    ("train-batch-size", train("mvtec", "data.batch_size=0"), 2,
     refused("data.batch_size", "0", "an integer >= 1")),
    ("train-val-fraction", train("mvtec", "data.val_fraction=1.5"), 2,
     refused("data.val_fraction", "1.5", "a number in [0, 1)")),
    ("train-width", train("mvtec", "model.width=0"), 2,
     refused("model.width", "0", "an integer >= 1")),
    ("train-depth", train("mvtec", "model.depth=0"), 2,
     refused("model.depth", "0", "an integer in [1, 10]")),
    ("train-skip-stride", train("mvtec", "model.skip_min_stride=3"), 2,
     refused("model.skip_min_stride", "3", "a power of 2 >= 2")),
    ("train-skip-dropout", train("mvtec", "model.skip_dropout=1.5"), 2,
     refused("model.skip_dropout", "1.5", "a number in [0, 1)")),
    ("train-skip-gate", train("mvtec", "model.skip_gate=pixel"), 2,
     refused("model.skip_gate", "pixel", "one of channel, spatial")),
    ("train-norm", train("mvtec", "model.norm=layer"), 2,
     refused("model.norm", "layer", "one of none, batch, instance, group")),
    ("train-gradient-weight", train("mvtec", "loss.gradient_weight=-1"), 2,
     refused("loss.gradient_weight", "-1", "a number >= 0")),
    ("train-lr-zero", train("mvtec", "optim.lr=0"), 2,
     refused("optim.lr", "0", "a number > 0")),
    ("train-lr-text", train("mvtec", "optim.lr=fast"), 2,
     refused("optim.lr", "fast", "a number > 0")),
    ("train-max-epochs", train("mvtec", "trainer.max_epochs=0"), 2,
     "error: trainer.max_epochs=0 trains nothing, so there is no checkpoint to select or test: set "
     "trainer.max_epochs >= 1, or evaluate a trained checkpoint with `anomaly-ae test checkpoint=...`"),
    ("train-precision", train("mvtec", "trainer.precision=8"), 2,
     refused("trainer.precision", "8", "one of 64-true, 32-true, 16-mixed, bf16-mixed, 16-true, bf16-true, "
             "64, 32, 16, bf16, transformer-engine, transformer-engine-float16")),
    ("train-seed", train("mvtec", "seed=abc"), 2,
     refused("seed", "abc", "an integer")),
    ("train-sweep-metric", train("mvtec", "sweep_metric=test/image_auroc"), 2,
     refused("sweep_metric", "test/image_auroc",
             "a validation metric (val/...) (a sweeper must never tune on test data)")),
    ("train-no-data", train("missing"), 5, NO_DATA),
    ("train-one-image", train("one", "data.batch_size=1"), 4,
     "error: no validation images in MVTec AD category 'toy' in {w}/one: 1 training images with "
     "data.val_fraction=0.25 hold none out, and validation selects the checkpoint and fits the thresholds; "
     "add training images or raise data.val_fraction"),
    ("train-truncated", train("broken"), 4,
     BROKEN),
    ("train-jpeg-mask", train("jpegmask"), 4,
     BROKEN.replace("broken", "jpegmask")),
    ("train-resume-missing", train("mvtec", "resume={w}/none.ckpt"), 5,
     "error: resume={w}/none.ckpt: no checkpoint at {w}/none.ckpt; pass resume=<path to a .ckpt>, or "
     "resume=last with hydra.run.dir (or output_dir) pointing at the run's directory"),
    ("train-resume-text", train("mvtec", "resume={w}/text.ckpt"), 6, NOT_A_CKPT),
    ("train-resume-evil", train("mvtec", "resume={w}/evil.ckpt"), 6, EVIL_LINE),
    ("test-text", ["test", TEXT, "data.root={w}/mvtec", "category=toy", "hydra.run.dir={w}/out"], 6,
     NOT_A_CKPT),
    ("test-missing", ["test", "checkpoint={w}/none.ckpt", "data.root={w}/mvtec", "category=toy",
                      "hydra.run.dir={w}/out"], 5, "error: checkpoint {w}/none.ckpt does not exist"),
    ("test-seed", ["test", CKPT, "seed=abc", "hydra.run.dir={w}/out"], 2,
     refused("seed", "abc", "an integer")),
    ("predict-no-checkpoint", PREDICT, 2,
     "error: checkpoint is not set: give checkpoint=... on the command line"),
    ("predict-input-missing", ["predict", CKPT, "input={w}/nothing", "output={w}/out"], 5,
     "error: input={w}/nothing matches no image: give an image file, a folder of images (.png, .jpg, .jpeg, "
     ".bmp, .tif, .tiff) or a glob such as 'photos/**/*.png'"),
    ("predict-batch-size", [*PREDICT, CKPT, "batch_size=0"], 2,
     refused("batch_size", "0", "an integer >= 1")),
    ("predict-map-format", [*PREDICT, CKPT, "map_format=tiff"], 2,
     refused("map_format", "tiff", "one of npy, png16")),
    ("predict-vmax", [*PREDICT, CKPT, "overlay_vmax=-1"], 2,
     refused("overlay_vmax", "-1", "null or a number > 0")),
    ("predict-device", [*PREDICT, CKPT, "device=gpu"], 2,
     refused("device", "gpu", "auto, cpu, cuda, cuda:<index> or mps")),
    ("predict-text", [*PREDICT, TEXT], 6, NOT_A_CKPT),
    ("predict-evil", [*PREDICT, EVIL], 6, EVIL_LINE),
    ("predict-foreign", [*PREDICT, "checkpoint={w}/foreign.ckpt"], 6,
     "error: checkpoint {w}/foreign.ckpt cannot be used: it has no 'state_dict' and 'hyper_parameters' "
     "(not a checkpoint of `anomaly-ae train`)"),
    ("predict-overwrite", ["predict", CKPT, "input={w}/photos/a.png", "output={w}/photos"], 7,
     "error: output={w}/photos already holds 1 of the files this command writes (a_overlay.png): choose an "
     "empty output folder, or set overwrite=true to replace them"),
    ("predict-unwritable", [*PREDICT[:2], CKPT, "output=/sys/anomaly_ae_out"], 8,
     "error: permission denied: /sys/anomaly_ae_out; choose a path you may read and write, or fix its "
     "permissions"),
    ("predict-output-under-file", [*PREDICT[:2], CKPT, "output={w}/text.ckpt/out"], 8,
     "error: not a directory: {w}/text.ckpt/out; choose another path"),
    ("export-onto-checkpoint", ["export", CKPT, "format=pt2", "output={w}/model.ckpt"], 7,
     "error: output={w}/model.ckpt is the checkpoint itself: exporting would replace the weights it is made "
     "from; choose another output, e.g. output=model.onnx"),
    ("export-onto-checkpoint-overwrite", ["export", CKPT, "output={w}/model.ckpt", "overwrite=true"], 7,
     "error: output={w}/model.ckpt is the checkpoint itself: exporting would replace the weights it is made "
     "from; choose another output, e.g. output=model.onnx"),
    ("export-existing", ["export", CKPT, "format=onnx"], 7,
     "error: output={w}/model.onnx exists already: choose another output, or set overwrite=true to "
     "replace it"),
    ("export-torchscript", ["export", CKPT, "format=torchscript", "output={w}/out/m.pt"], 2,
     "error: format=torchscript is not allowed: format must be one of onnx, pt2 (TorchScript export was "
     "replaced by format=pt2)" + SET_IT),
    ("export-text", ["export", TEXT, "output={w}/out/m.onnx"], 6, NOT_A_CKPT),
    ("export-missing", ["export", "checkpoint={w}/none.ckpt", "output={w}/out/m.onnx"], 5,
     "error: checkpoint {w}/none.ckpt does not exist"),
    ("explain-text", [*EXPLAIN, TEXT], 6, NOT_A_CKPT),
    ("explain-evil", [*EXPLAIN, EVIL], 6, EVIL_LINE),
    ("explain-input-missing", ["explain", CKPT, "input={w}/nothing.png", "output={w}/out"], 5,
     "error: input={w}/nothing.png is neither an image file nor a folder with images"),
    ("explain-batch-size", [*EXPLAIN, CKPT, "batch_size=0"], 2,
     refused("batch_size", "0", "an integer >= 1")),
    ("explain-reduction", [*EXPLAIN, CKPT, "reduction=median"], 2,
     refused("reduction", "median", "null or one of max, topk_mean, mean")),
    ("explain-overwrite", ["explain", CKPT, "input={w}/photos", "output={w}/photos", "image_size=32"], 7,
     "error: output={w}/photos already holds 2 of the files this command writes (a.png, a_overlay.png): "
     "choose an empty output folder, or set overwrite=true to replace them"),
    ("check-no-data", [*CHECK, "data.root={w}/missing"], 5, NO_DATA),
    ("check-truncated", [*CHECK, "data.root={w}/broken"], 4,
     BROKEN),
    ("check-image-size", [*CHECK, "data.root={w}/mvtec", "data.image_size=abc"], 2,
     "error: data.image_size=abc is not allowed: data.image_size must be an integer in [1, 4096] (tile or "
     "resize larger images first: 4096 px needs GBs per image)" + SET_IT),
    ("check-bad-override", [*CHECK, "data.root={w}/mvtec", "data.nonsense=1"], 2,
     "error: Could not override 'data.nonsense'."),
    ("unknown-command", ["trian"], 2,
     "error: unknown command 'trian'; choose one of train, test, predict, export, explain, explain-evaluate, "
     "report, check"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "code", "first_line"), [case[1:] for case in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_gets_one_line_and_its_exit_code(world, capsys, monkeypatch, argv, code, first_line):
    if "/sys/" in " ".join(argv) and not _sys_refuses_writes():
        pytest.skip("this machine lets the user create folders in /sys")
    monkeypatch.chdir(world)  # Hydra's default run dirs, if any, land in the catalogue's folder
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    before = snapshot(world, world / "out")
    try:
        result = main([arg.format(w=world) for arg in argv])
    except SystemExit as stopped:
        result = stopped.code
    captured = capsys.readouterr()
    assert result == code, captured.err
    assert captured.err.splitlines()[0] == first_line.format(w=world)
    assert "Traceback" not in captured.err + captured.out
    assert snapshot(world, world / "out") == before


def _sys_refuses_writes() -> bool:
    try:
        Path("/sys/anomaly_ae_probe").mkdir()
    except PermissionError:
        return True
    except OSError:
        return False
    Path("/sys/anomaly_ae_probe").rmdir()
    return False


def test_a_jpeg_mask_is_named_in_place_of_the_missing_png(world, capsys, monkeypatch):
    monkeypatch.chdir(world)
    with pytest.raises(SystemExit):
        main([arg.format(w=world) for arg in CHECK + ["data.root={w}/jpegmask"]])
    problem = capsys.readouterr().err.splitlines()[1]
    assert problem == (
        f"  - {world}/jpegmask/toy/test/square/000.png: defective test image has no mask: expected "
        f"{world}/jpegmask/toy/ground_truth/square/000_mask.png, found 000_mask.jpg instead; masks must be "
        "lossless .png (JPEG blurs the 0/255 edges): save it as 000_mask.png"
    )


def test_export_overwrite_replaces_an_existing_file_with_a_complete_one(world, tmp_path, capsys):
    target = tmp_path / "model.pt2"
    target.write_bytes(b"old")
    main(["export", f"checkpoint={world}/model.ckpt", "format=pt2", f"output={target}", "overwrite=true"])
    assert target.stat().st_size > 1000 and not list(tmp_path.glob(".*partial*"))
    assert "max abs difference to the checkpoint" in capsys.readouterr().out


def test_predict_warns_about_an_image_far_from_square(world, tmp_path, capsys):
    wide = tmp_path / "wide.png"
    Image.fromarray(np.full((10, 400), 128, np.uint8)).save(wide)
    main(
        [
            "predict",
            f"checkpoint={world}/model.ckpt",
            f"input={wide}",
            f"output={tmp_path}/out",
            "progress=false",
        ]
    )
    assert capsys.readouterr().err.splitlines()[0] == (
        f"warning: {wide} is 400x10 (40:1) and is squashed to the model's 32x32 square input, unlike its "
        "square training images: crop it into near-square tiles for a fair score"
    )


def run_module(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    root = str(Path(__file__).resolve().parents[2])
    environment = os.environ | {"PYTHONPATH": root, "HYDRA_FULL_ERROR": "0"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, timeout=300, env=environment
    )


def test_the_real_entry_points_exit_with_one_line(world, tmp_path):
    trained = run_module("anomaly_ae.run", "score.sigma=-1", f"hydra.run.dir={tmp_path}/run")
    assert trained.returncode == 2 and "Traceback" not in trained.stderr
    assert trained.stderr.startswith("error: score.sigma=-1 is not allowed: ")
    predicted = run_module("anomaly_ae", "predict", f"checkpoint={world}/text.ckpt", f"input={world}/photos")
    assert predicted.returncode == 6 and predicted.stderr == NOT_A_CKPT.format(w=world) + "\n"


def test_hydra_full_error_shows_the_traceback(world):
    shown = run_module(
        "anomaly_ae", "predict", f"checkpoint={world}/text.ckpt", f"input={world}/photos",
        env={"HYDRA_FULL_ERROR": "1"},
    )  # fmt: skip
    assert shown.returncode == 1 and "Traceback" in shown.stderr and "CheckpointError" in shown.stderr


@pytest.mark.parametrize("installed", [False, True])
def test_materials_without_robosuite_or_with_another_photo(tmp_path, capsys, monkeypatch, installed):
    from anomaly_ae.data import textures

    package = tmp_path / "site" / "robosuite"
    if installed:  # installed, but its photo is not the pinned one
        (package / "models" / "assets" / "textures").mkdir(parents=True)
        (package / "__init__.py").write_text("raise ImportError('needs mujoco')\n")
        Image.fromarray(np.zeros((600, 600), np.uint8)).save(package / "models/assets/textures/gray-felt.png")
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
    else:
        monkeypatch.setattr(textures.importlib.util, "find_spec", lambda name: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HYDRA_FULL_ERROR", "0")
    argv = [
        "train",
        "data=materials",
        "category=felt",
        f"data.root={tmp_path}/data",
        "trainer=cpu",
        "logger=none",
    ]
    with pytest.raises(SystemExit) as stopped:
        main([*argv, f"output_dir={tmp_path}/out"])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if installed:
        assert stopped.value.code == 9
        assert err.splitlines()[-1] == (
            f"error: {package}/models/assets/textures/gray-felt.png is missing or not the photo of "
            "robosuite==1.5.2; reinstall it: pip install --no-deps --force-reinstall 'robosuite==1.5.2'"
        )
    else:
        assert stopped.value.code == 3
        assert err.splitlines()[-1] == (
            "error: robosuite is not installed; data=materials cuts its categories from the material photos "
            "in its wheel: pip install --no-deps 'robosuite==1.5.2'"
        )
    assert not (tmp_path / "data" / "felt").exists()

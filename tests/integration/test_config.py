from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from anomaly_ae.data.mvtec import CATEGORIES, TEXTURES
from anomaly_ae.model.autoencoder import architecture
from tests.helpers import CONF_DIR, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "model", "corruption", "trainer", "logger", "experiment"])
def test_every_option_of_every_group_composes(group, tmp_path):
    assert options(group), f"conf/{group} is empty"
    for name in options(group):
        cfg = compose_config([f"{group}={name}", f"output_dir={tmp_path}"])
        assert cfg.output_dir == str(tmp_path)
        if group == "model":
            kwargs = architecture(cfg.model)  # without compile, channels_last: run.py's job
            assert instantiate(kwargs, in_channels=3).in_channels == 3
        if group == "corruption" and cfg.corruption:
            instantiate(cfg.corruption)


def test_category_flows_into_data_and_sweep_subdir():
    cfg = compose_config(["category=carpet"])
    assert cfg.data.category == "carpet"
    assert cfg.data.split_seed == 0


def test_trainer_variants_extend_the_default():
    cpu = compose_config(["trainer=cpu"]).trainer
    ddp = compose_config(["trainer=ddp"]).trainer
    assert cpu.accelerator == "cpu" and cpu.max_epochs == compose_config([]).trainer.max_epochs
    assert ddp.strategy == "ddp" and ddp.devices == 2
    gpu = compose_config(["trainer=gpu"]).trainer
    assert gpu.accelerator == "gpu" and gpu.devices == 1 and gpu.precision == "bf16-mixed" and gpu.benchmark


def test_the_bottleneck_model_is_conv_ae_without_skips_and_the_elpv_recipe_uses_it():
    default = compose_config([]).model
    bottleneck = compose_config(["model=conv_ae_bottleneck"]).model
    changed = {key: bottleneck[key] for key in default if bottleneck[key] != default[key]}
    assert changed == {"skips": False, "upsample": "bilinear", "down_kernel": 3, "output": "sigmoid"}
    demo = compose_config(["experiment=elpv_demo"]).model
    assert {**bottleneck, "width": 16, "max_width": 128} == dict(demo)


def test_typos_are_rejected():
    with pytest.raises(Exception, match="lrr"):
        compose_config(["optim.lrr=1"])


def test_mvtec_paper_sweeps_every_category_and_three_seeds_with_flips_for_textures():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["experiment=mvtec_paper"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert tuple(params.category.split(",")) == CATEGORIES and params.seed == "0,1,2"
    for category in CATEGORIES:
        run = compose_config(["experiment=mvtec_paper", f"category={category}"])
        flips = category in TEXTURES
        assert dict(run.data.augment) == {"hflip": flips, "vflip": flips, "rot90": False}, category
        assert (run.data.image_size, run.data.batch_size, run.score.sigma) == (256, 16, 4.0)
        assert (run.optim.lr, run.optim.scheduler, run.eval.max_fpr) == (2.0e-4, "cosine", 0.3)

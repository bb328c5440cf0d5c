from pathlib import Path

import pytest
from hydra.utils import instantiate

from tests.conftest import CONF_DIR, compose_config


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["data", "model", "corruption", "trainer", "logger", "experiment"])
def test_every_option_of_every_group_composes(group, tmp_path):
    assert options(group), f"conf/{group} is empty"
    for name in options(group):
        cfg = compose_config([f"{group}={name}", f"output_dir={tmp_path}"])
        assert cfg.output_dir == str(tmp_path)
        if group == "model":
            kwargs = {key: value for key, value in cfg.model.items() if key != "compile"}  # run.py's job
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
    assert gpu.accelerator == "gpu" and gpu.devices == 1 and gpu.precision == "32-true"


def test_typos_are_rejected():
    with pytest.raises(Exception, match="lrr"):
        compose_config(["optim.lrr=1"])

"""Hydra launchers: the SLURM one matches the Trainer's layout; the local one runs a sweep in parallel."""

from hydra import compose, initialize_config_dir

from tests.helpers import CONF_DIR, make_mvtec_tree
from tests.integration.test_run import cli_overrides, run_cli


def test_slurm_launcher_takes_nodes_tasks_and_gpus_from_the_trainer():
    overrides = ["hydra/launcher=slurm", "trainer=gpu", "trainer.devices=4", "trainer.num_nodes=2"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        launcher = compose("config", overrides=overrides, return_hydra_config=True).hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.partition is None and launcher.timeout_min == 720


def test_local_launcher_runs_a_two_job_sweep_and_the_report_aggregates_it(tmp_path):
    root = make_mvtec_tree(tmp_path / "data", category="a")
    make_mvtec_tree(tmp_path / "data", category="b", seed=1)
    args = ["-m", "hydra/launcher=local", *cli_overrides(root), "category=a,b", "hydra.sweep.dir=sweep"]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Submitit 'local' sweep output dir : sweep" in result.stdout + result.stderr
    jobs = sorted(p.parent.name for p in (tmp_path / "sweep").glob("*/metrics.json"))
    assert jobs == ["a_seed0_0", "b_seed0_1"]
    assert len(list((tmp_path / "sweep/.submitit").glob("*/*_result.pkl"))) == 2  # ran as submitit jobs
    table = (tmp_path / "sweep/results.md").read_text()
    assert "| a | 1 |" in table and "| b | 1 |" in table

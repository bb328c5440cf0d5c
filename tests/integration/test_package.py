"""The installable package: a non-editable wheel runs from any folder, the console script and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from anomaly_ae.cli.main import COMMANDS, main
from anomaly_ae.optional import MissingExtra, require
from tests.helpers import make_mvtec_tree, tiny_overrides

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    """A throw-away environment with the built wheel (not editable) and this environment's dependencies."""
    tmp = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", tmp, REPO], check=True)
    env = tmp / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env], check=True)
    site = Path(
        subprocess.check_output(
            [env / "bin/python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # Reuse the installed dependencies; a plain path entry, so this environment's editable finder stays off.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(tmp.glob("anomaly_ae-*.whl"))
    subprocess.run([*pip, "--python", env / "bin/python", "install", "--no-deps", wheel], check=True)
    return env


def test_wheel_ships_the_configs_and_trains_from_another_folder(wheel_env, tmp_path):
    where = subprocess.run(
        [wheel_env / "bin/python", "-c", "import anomaly_ae.cli.common as c, anomaly_ae; print(c.CONF_DIR)"],
        capture_output=True, text=True, check=True, cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(wheel_env)) and where.endswith("anomaly_ae/conf")  # not the repository's
    script = wheel_env / "bin/anomaly-ae"
    helped = subprocess.run([script, "train", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert helped.returncode == 0 and "== Config ==" in helped.stdout and "category: grid" in helped.stdout
    root = make_mvtec_tree(tmp_path / "data")
    overrides = tiny_overrides(root, tmp_path / "run") + [
        "+trainer.limit_train_batches=1",
        "trainer.max_epochs=1",
    ]
    done = subprocess.run(
        [script, "train", *overrides], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["steps"] == 1 and 0 <= report["metrics"]["test/image_auroc"] <= 1


def test_console_script_lists_its_commands_and_refuses_unknown_ones(capsys):
    assert main([]) == 2
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in COMMANDS)
    assert main(["trian"]) == 2
    assert capsys.readouterr().err == (
        "error: unknown command 'trian'; choose one of train, test, predict, export, explain, "
        "explain-evaluate, report, check\n"
    )


def test_a_missing_optional_dependency_is_one_line_naming_its_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "zennit", None)  # as if not installed
    with pytest.raises(MissingExtra) as raised:
        require("zennit", "explain")
    assert (
        str(raised.value)
        == "zennit is not installed; it comes with the [explain] extra: pip install 'anomaly_ae[explain]'"
    )
    for name in [m for m in sys.modules if m.startswith(("anomaly_ae.explain", "anomaly_ae.cli.explain"))]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["explain", "checkpoint=x", "input=y"]) == 3
    assert capsys.readouterr().err == f"error: {raised.value}\n"

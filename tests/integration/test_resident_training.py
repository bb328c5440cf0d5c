"""The device-resident data path trains and resumes to the weights and metrics of the DataLoader path."""

import json
import logging

from anomaly_ae.cli.train import fit
from tests.helpers import compose_config, tiny_overrides
from tests.integration.test_resume import same_weights, weights


def test_resident_path_trains_and_resumes_to_the_dataloaders_weights(
    mvtec_root, tmp_path, one_thread, caplog
):
    def run(name: str, resident: str, epochs: int, *extra: str) -> tuple[dict, dict]:
        out = tmp_path / name
        overrides = tiny_overrides(mvtec_root, out) + [
            f"data.resident={resident}", "data.resident_eval_batch_size=null", f"trainer.max_epochs={epochs}",
            "+trainer.limit_val_batches=1", "optim.scheduler=none", *extra,
        ]  # fmt: skip
        # optim.scheduler=none: the cosine follows max_epochs, so only without it does a 2-epoch run resumed
        # to 3 epochs match a 3-epoch run
        metrics = fit(compose_config(overrides))
        return metrics, weights(out / "checkpoints/last.ckpt")

    loaded, loaded_weights = run("dataloader", "false", 3)
    with caplog.at_level(logging.INFO, logger="anomaly_ae.data.resident"):
        resident, resident_weights = run("resident", "true", 3)
    assert "18 images (0.0 MB) kept on cpu, drawn by index" in caplog.text  # the training split
    assert resident == loaded  # bit-identical floats: the same batches, flips and corruptions
    assert same_weights(resident_weights, loaded_weights)

    run("resumed", "true", 2)
    resumed, resumed_weights = run("resumed", "true", 3, "resume=last")
    assert json.loads((tmp_path / "resumed/metrics.json").read_text())["steps"] == 12  # continued
    assert resumed == loaded and same_weights(resumed_weights, loaded_weights)

"""What do the dashboards cost? The validation panel and the W&B test table next to a training step.

Run: PYTHONPATH=. python experiments/bench_logging.py   (about a minute on 2 CPU cores)

Model: the texture demo's (conf/model/conv_ae.yaml with width 16, max_width 128, bilinear upsampling), 3
channels at 128 px, the paper's corruption. Timed side by side and interleaved, so that load changes on a
shared machine hit every case alike; medians over --repeats.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from anomaly_ae.cli.common import CONF_DIR
from anomaly_ae.data.images import as_float
from anomaly_ae.evaluation.results import TestResults
from anomaly_ae.integrations.dashboards import test_overlays, validation_panel, wandb_test_table
from anomaly_ae.training.module import VAL_CORRUPTION_SEED, AnomalyAE

SIZE, BATCH, PANEL = 128, 16, 4


def build(cfg) -> AnomalyAE:
    plain = {key: OmegaConf.to_container(cfg[key], resolve=True) for key in ("model", "corruption", "optim")}
    return AnomalyAE(
        **plain,
        score={"sigma": 2.0, "reduction": "max", "topk": 100},
        loss={"clean_weight": None},
        augment={"hflip": False, "vflip": False, "rot90": False},
        in_channels=3,
        image_size=SIZE,
    )


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test-images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    overrides = ["model.width=16", "model.max_width=128", "model.upsample=bilinear", "output_dir=unused"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        module = build(compose(config_name="config", overrides=overrides))
    optimizer = torch.optim.Adam(module.parameters(), lr=2e-4)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(BATCH, 3, SIZE, SIZE, generator=generator)
    test = (torch.rand(args.test_images, 3, SIZE, SIZE, generator=generator) * 255).byte()
    masks = (torch.rand(args.test_images, 1, SIZE, SIZE, generator=generator) > 0.99).byte() * 255
    loader = [
        {"image": test[i : i + 32], "mask": masks[i : i + 32], "path": [f"{j}.png" for j in range(i, i + 32)]}
        for i in range(0, args.test_images, 32)
    ]
    records = [{"path": f"{j}.png", "defect_type": "x", "label": j % 2, "score": 0.5, "predicted": 1}
               for j in range(args.test_images)]  # fmt: skip

    def training_step() -> None:
        module.train()
        corrupted, _ = module.corruption(images, generator)
        loss = F.mse_loss(module.autoencoder(corrupted), images)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def panel() -> None:
        module.eval()
        validation_panel(module, images[:PANEL], VAL_CORRUPTION_SEED)

    def table() -> None:  # the test step's forward pass, then what the table adds to it
        module.eval()
        with torch.no_grad():
            outputs = [(module.autoencoder(as_float(b["image"])), b) for b in loader]
            maps = torch.cat([module.scorer.anomaly_map(as_float(b["image"]), r) for r, b in outputs])
        results = TestResults(
            metrics={},
            records=records,
            images=test,
            reconstructions=torch.cat([r for r, _ in outputs]),
            maps=maps,
            masks=masks[:, 0] > 0,
        )
        wandb_test_table(records, test_overlays(results), has_masks=True)

    cases = {"training step": training_step, "validation panel": panel, "W&B test table": table}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    median = {name: statistics.median(values) for name, values in times.items()}
    step = median["training step"]
    print(f"torch threads {torch.get_num_threads()}, {args.repeats} repeats, medians")
    print(f"training step (batch {BATCH}, {SIZE} px)        {step:7.3f} s   1.00 steps")
    print(f"validation panel ({PANEL} images)           {median['validation panel']:7.3f} s   "
          f"{median['validation panel'] / step:.2f} steps")  # fmt: skip
    print(f"W&B test table ({args.test_images} images, overlays)  {median['W&B test table']:7.3f} s   "
          f"{median['W&B test table'] / step:.2f} steps")  # fmt: skip


if __name__ == "__main__":
    main()

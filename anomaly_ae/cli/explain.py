"""anomaly-ae explain: relevance heat maps of anomaly scores for an image or a folder of images.

anomaly-ae explain checkpoint=outputs/brick/.../checkpoints/best.ckpt input=img.png output=out
anomaly-ae explain checkpoint=... input=folder/ explain=epsilon_gamma_box region=[10,20,60,90]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig
from torch import Tensor

from anomaly_ae.cli.common import CONF_DIR, ConfigError, one_line_errors
from anomaly_ae.cli.predict import refuse_overwrites
from anomaly_ae.cli.validate import EXPLAIN, validate
from anomaly_ae.data.images import as_float, list_images, read_image, read_mask
from anomaly_ae.explain.relevance import Method, box_mask, explain, lrp_scorer
from anomaly_ae.inference.loading import image_size, load_scorer, resolve_device
from anomaly_ae.reporting import plots
from anomaly_ae.reporting.run_outputs import write_csv


def input_paths(source: str | Path) -> list[Path]:
    """An image file, or the images directly inside a folder."""
    source = Path(source)
    paths = list_images(source) if source.is_dir() else [source]
    if not paths or not paths[0].is_file():
        raise FileNotFoundError(f"input={source} is neither an image file nor a folder with images")
    return paths


def load_region(region, size: int) -> Tensor | None:
    """None, a [top, left, bottom, right] box, or a mask file -> None or a (1, size, size) bool mask."""
    if region is None:
        return None
    if isinstance(region, Sequence | ListConfig) and not isinstance(region, str):
        if len(region) != 4:
            raise ConfigError(f"region={list(region)} must be [top, left, bottom, right] in model pixels")
        return box_mask(tuple(int(v) for v in region), (size, size))
    return read_mask(region, size).bool()


def explain_images(cfg: DictConfig) -> list[dict]:
    """Write one panel (input | anomaly map | relevance) and the raw relevance per image; return the rows."""
    validate(cfg, EXPLAIN)
    paths, output = input_paths(cfg.input), Path(cfg.output)  # before loading: a wrong input fails fast
    files = [output / f"{p.stem}{suffix}" for p in paths for suffix in (".png", "_relevance.npy")]
    refuse_overwrites([*files, output / "scores.csv"], cfg.overwrite)
    device = resolve_device(cfg.device)
    scorer = load_scorer(cfg.checkpoint, device, cfg.reduction)
    method = Method.from_config(cfg.explain)
    size = image_size(cfg.checkpoint, cfg.image_size)
    channels = scorer.autoencoder.in_channels
    region = load_region(cfg.region, size)
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for start in range(0, len(paths), cfg.batch_size):
        batch = paths[start : start + cfg.batch_size]
        images = as_float(torch.stack([read_image(p, channels, size) for p in batch])).to(device)
        masks = None if region is None else region.expand(len(batch), -1, -1, -1).to(device)
        result = explain(scorer, images, method, masks)
        for i, path in enumerate(batch):
            heat = result.heatmap[i].cpu()
            tiles = [plots.image_rgb(images[i]), plots.magnitude_rgb(result.maps[i])]
            tiles.append(plots.relevance_rgb(heat, signed=method.pooling == "sum"))
            plots.save_png(
                plots.grid([tiles], ["input", "anomaly map", method.name]), output / f"{path.stem}.png"
            )
            np.save(output / f"{path.stem}_relevance.npy", heat.numpy().astype(np.float32))
            score, total = float(result.scores[i]), float(heat.sum())
            rows.append({"image": str(path), "method": method.name, "score": score, "relevance_sum": total})
    write_csv(output / "scores.csv", rows)
    print(f"{len(rows)} explanations ({method.name}) on {device} written to {output}")
    if method.kind == "lrp" and lrp_scorer(scorer) is not scorer:
        print(
            f"LRP explains the squared component of score.residual={scorer.residual_kind}: the score "
            "column is that component's image score (the map in each panel is the model's own)"
        )
    return rows


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="explain")
@one_line_errors
def main(cfg: DictConfig) -> None:
    explain_images(cfg)

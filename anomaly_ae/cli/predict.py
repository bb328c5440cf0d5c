"""anomaly-ae predict: anomaly maps, overlays, masks and scores for users' images.

anomaly-ae predict checkpoint=outputs/grid/.../checkpoints/best.ckpt input=photos/ output=preds
anomaly-ae predict checkpoint=model.onnx input='photos/**/*.png' map_format=png16
"""

from __future__ import annotations

import glob
import math
import sys
from collections import Counter
from pathlib import Path

import hydra
import numpy as np
from omegaconf import DictConfig
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor

from anomaly_ae.cli.common import CONF_DIR, OutputExists, one_line_errors
from anomaly_ae.cli.validate import PREDICT, validate
from anomaly_ae.data.images import IMAGE_SUFFIXES, list_images, read_image
from anomaly_ae.inference.detector import Detector
from anomaly_ae.reporting.plots import heat_overlay
from anomaly_ae.reporting.run_outputs import write_csv

# Wider or taller than this, an image squashed to the model's square input loses the shapes it was trained on.
MAX_ASPECT = 2.0


def resolve_inputs(source: str | Path) -> list[Path]:
    """An image file, the images directly inside a folder, or the images a glob matches (** recurses)."""
    path = Path(source)
    if path.is_dir():
        paths = list_images(path)
    elif path.is_file():
        paths = [path]
    else:
        matches = glob.glob(str(source), recursive=True)
        paths = sorted(Path(p) for p in matches if Path(p).is_file() and p.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise FileNotFoundError(
            f"input={source} matches no image: give an image file, a folder of images "
            f"({', '.join(IMAGE_SUFFIXES)}) or a glob such as 'photos/**/*.png'"
        )
    return paths


def output_stems(paths: list[Path]) -> list[str]:
    """File stems, made unique with their parent folders where two inputs share a name."""
    counts = Counter(p.stem for p in paths)
    return [p.stem if counts[p.stem] == 1 else "_".join([*p.parent.parts[-2:], p.stem]) for p in paths]


def save_map(amap: Tensor, stem: str, output: Path, map_format: str) -> float | None:
    """Write the map as float32 .npy, or as a 16-bit PNG scaled to its maximum; return that scale."""
    values = amap.numpy().astype(np.float32)
    if map_format == "npy":
        np.save(output / f"{stem}_map.npy", values)
        return None
    scale = float(values.max()) if values.max() > 0 else 1.0  # per image, written to the CSV
    Image.fromarray(np.rint(values / scale * 65535).astype(np.uint16)).save(output / f"{stem}_map.png")
    return scale


def planned_files(stems: list[str], output: Path, map_format: str) -> list[Path]:
    """Every file this command will write into `output`."""
    suffixes = ("_map.npy" if map_format == "npy" else "_map.png", "_overlay.png", "_mask.png")
    files = [output / f"{stem}{suffix}" for stem in stems for suffix in suffixes]
    return [*files, output / "predictions.csv"]


def refuse_overwrites(files: list[Path], overwrite: bool) -> None:
    """Raise OutputExists when any of `files` exists (unless `overwrite`): never replace a user's file."""
    existing = [path for path in files if path.exists()]
    if existing and not overwrite:
        shown = ", ".join(path.name for path in existing[:3]) + (", ..." if len(existing) > 3 else "")
        raise OutputExists(
            f"output={existing[0].parent} already holds {len(existing)} of the files this command writes "
            f"({shown}): choose an empty output folder, or set overwrite=true to replace them"
        )


def warn_aspect(path: Path, height: int, width: int, size: int) -> bool:
    """Print a warning when the image is far from square; return whether it did."""
    ratio = max(height, width) / max(1, min(height, width))
    if ratio <= MAX_ASPECT:
        return False
    print(
        f"warning: {path} is {width}x{height} ({ratio:.0f}:1) and is squashed to the model's {size}x{size} "
        "square input, unlike its square training images: crop it into near-square tiles for a fair score",
        file=sys.stderr,
    )
    return True


def overlay_scale(detector: Detector, given: float | None) -> float | None:
    """One map value shown red for every image; None: each image's own maximum (no threshold to go by)."""
    if given is not None:
        return float(given)
    return 2 * detector.pixel_threshold if math.isfinite(detector.pixel_threshold) else None


def predict_images(cfg: DictConfig) -> list[dict]:
    """Write map, overlay and mask per image and predictions.csv; return the CSV rows."""
    validate(cfg, PREDICT)
    paths = resolve_inputs(cfg.input)  # before loading: a wrong input fails fast
    output, stems = Path(cfg.output), output_stems(paths)
    refuse_overwrites(planned_files(stems, output, cfg.map_format), cfg.overwrite)
    detector = Detector.load(cfg.checkpoint, cfg.device)
    output.mkdir(parents=True, exist_ok=True)
    vmax, rows = overlay_scale(detector, cfg.overlay_vmax), []
    columns = [TextColumn("[bold]predict"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, TextColumn("{task.fields[name]}"), disable=not cfg.progress) as progress:
        task = progress.add_task("predict", total=len(paths), name="")
        for start in range(0, len(paths), cfg.batch_size):
            batch = paths[start : start + cfg.batch_size]
            result = detector.predict(batch, batch_size=cfg.batch_size)
            for i, path in enumerate(batch):
                stem, amap = stems[start + i], result.maps[i]
                scale = save_map(amap, stem, output, cfg.map_format)
                image = read_image(path, 3, None).float() / 255  # the original, in colour where it has colour
                warn_aspect(path, *image.shape[-2:], detector.image_size)
                peak = vmax if vmax is not None else float(amap.max())
                picture = np.rint(heat_overlay(image, amap, peak) * 255).astype(np.uint8)
                Image.fromarray(picture).save(output / f"{stem}_overlay.png")
                mask = result.masks[i].numpy().astype(np.uint8) * 255
                Image.fromarray(mask).save(output / f"{stem}_mask.png")
                row = {"path": str(path), "score": float(result.scores[i]), "label": int(result.labels[i])}
                row["threshold"] = result.image_threshold
                if scale is not None:
                    row["map_scale"] = scale
                rows.append(row)
            progress.update(task, advance=len(batch), name=batch[-1].name)
    write_csv(output / "predictions.csv", rows)
    anomalous = sum(row["label"] for row in rows)
    print(
        f"{len(rows)} images, {anomalous} anomalous (score >= {detector.image_threshold:.4g}), "
        f"on {detector.device}: maps ({cfg.map_format}), overlays, masks and predictions.csv in {output}"
    )
    return rows


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
@one_line_errors
def main(cfg: DictConfig) -> None:
    predict_images(cfg)


if __name__ == "__main__":
    main()

"""Synthetic test-time defects for the texture demo: images (H, W, C) uint8 -> (defect image, exact mask).

This code shares nothing with `anomaly_ae.corruption` on purpose, so the demo does not reward a model for
having memorised its own training corruption. Each family is its own mechanism (and its own `test/<name>/`
folder, so it is scored separately):
- scratch:     thin curved strokes (Bezier curves, 1-3 px) of a bright or dark tone;
- stain:       local brightness and contrast change inside a wobbly soft-edged outline;
- crack:       dark branching random walks, 1-2 px;
- hole:        missing material: a chain of discs of a flat dark or bright tone;
- smudge:      loss of detail: the texture blurred and its contrast flattened inside a wobbly outline;
- misoriented: a patch of the same texture rotated by a non-right angle and rescaled (misplaced material);
- particles:   foreign particles: a cluster of small compact blobs of a foreign colour or intensity.
The code differs from the training corruption's, but not every family is far from it. The default
`corruption=families` draws thin strokes (near scratch and crack), in-place photometric changes (near stain),
flat fills (near hole) and rotated, rescaled self-copies (near misoriented). Only smudge (blur and flattened
contrast) and compact particle clusters have no counterpart; experiments/README.md reports each family apart.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

Defect = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def commit(base: np.ndarray, target: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Write `target` into `base` inside `region` so that every region pixel changes by at least 1 level.

    Returns the uint8 image and the bool mask (H, W), which equals `(out != base).any(-1)` exactly.
    """
    base16 = base.astype(np.int16)
    new = np.clip(np.rint(target), 0, 255).astype(np.int16)
    out = base16.copy()
    out[region] = new[region]
    # A faint soft edge may round back to the old value; nudge it by one level in the intended
    # direction (or away from the nearer bound) so "in the mask" always means "changed".
    same = region & (out == base16).all(-1)
    step = np.sign(target - base16).astype(np.int16)
    step[step == 0] = np.where(base16[step == 0] < 128, 1, -1)
    step = np.where((base16 + step < 0) | (base16 + step > 255), -step, step)
    out[same] = base16[same] + step[same]
    return out.astype(np.uint8), region.copy()


def _thicken(line: np.ndarray, width: int) -> np.ndarray:
    """Dilate a 1 px line mask to about `width` px."""
    if width <= 1:
        return line
    return ndimage.binary_dilation(line, np.ones((width, width), bool))


def _draw_points(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Rasterise float point coordinates into a bool mask, dropping points outside the image."""
    r, c = np.rint(rows).astype(int), np.rint(cols).astype(int)
    keep = (r >= 0) & (r < shape[0]) & (c >= 0) & (c < shape[1])
    mask = np.zeros(shape, bool)
    mask[r[keep], c[keep]] = True
    return mask


def scratch(base: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """1-3 thin bright or dark curved lines (cubic Bezier, 1-3 px wide)."""
    h, w = base.shape[:2]
    region = np.zeros((h, w), bool)
    for _ in range(rng.integers(1, 4)):
        # Control points spread over the central area so the curve spans a good part of the image.
        ctrl = rng.uniform(0.1, 0.9, size=(4, 2)) * (h, w)
        t = np.linspace(0.0, 1.0, 4 * (h + w))[:, None]  # dense enough for gap-free 1 px lines
        weights = np.hstack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3])  # Bernstein
        curve = weights @ ctrl  # (n, 2) points on the curve
        line = _draw_points((h, w), curve[:, 0], curve[:, 1])
        region |= _thicken(line, int(rng.integers(1, 4)))
    level = rng.choice([rng.uniform(215, 250), rng.uniform(5, 40)])  # bright or dark scratch
    target = np.broadcast_to(np.float32(level), base.shape)
    # Blend a little of the texture back in so the scratch is not a perfectly flat stroke.
    target = 0.8 * target + 0.2 * base
    return commit(base, target, region)


def stain(base: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A smooth star-shaped blob with soft edge whose contrast and brightness are altered."""
    h, w = base.shape[:2]
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    radius = rng.uniform(0.08, 0.2) * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rho, theta = np.hypot(yy - cy, xx - cx), np.arctan2(yy - cy, xx - cx)
    # Radial Fourier perturbation gives a wobbly outline instead of an ellipse or polygon.
    wobble = sum(
        rng.uniform(0.0, 0.25 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)
    )
    edge = radius * (1.0 + wobble)
    soft = max(2.0, 0.3 * radius)  # width of the soft rim in px
    alpha = np.clip((edge - rho) / soft, 0.0, 1.0)
    alpha = alpha * alpha * (3 - 2 * alpha)  # smoothstep: gentle falloff towards the rim
    # Threshold the faint outer rim away so the mask matches the visible stain; the small step this
    # leaves at the edge reads as the stain's border.
    alpha = np.where(alpha >= 0.2, alpha, 0.0)
    region = alpha > 0.0
    mean = base[region].mean() if region.any() else 128.0
    contrast = rng.uniform(0.3, 0.7)
    shift = rng.choice([-1.0, 1.0]) * rng.uniform(30, 70)
    stained = mean + contrast * (base - mean) + shift
    target = base + alpha[..., None] * (stained - base)
    return commit(base, target, region)


def crack(base: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A dark branching random-walk line, 1-2 px wide."""
    h, w = base.shape[:2]
    line = np.zeros((h, w), bool)
    scale = min(h, w)
    # Each walker: (row, col, heading, remaining steps, depth); branches are shorter and shallower.
    start = (rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0, 2 * np.pi))
    walkers = [(*start, int(rng.uniform(0.4, 0.8) * scale), 0)]
    while walkers:
        r, c, heading, steps, depth = walkers.pop()
        turns = np.cumsum(rng.normal(0.0, 0.25, steps)) + heading  # correlated turns: a jagged path
        rows = r + np.cumsum(np.sin(turns) * 0.7)  # 0.7 px steps keep the path 8-connected
        cols = c + np.cumsum(np.cos(turns) * 0.7)
        line |= _draw_points((h, w), rows, cols)
        if depth < 2:
            for i in np.flatnonzero(rng.random(steps) < 3.0 / max(steps, 1)):  # ~3 branches per walker
                side = rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.2)
                walkers.append((rows[i], cols[i], turns[i] + side, max(steps // 3, 4), depth + 1))
    region = _thicken(line, int(rng.integers(1, 3)))
    target = base * rng.uniform(0.15, 0.45)  # cracks are shadows: darken, keep a trace of texture
    return commit(base, target, region)


def hole(base: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Missing material: a chain of overlapping discs filled with a flat dark or bright tone plus noise."""
    h, w = base.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    region = np.zeros((h, w), bool)
    cy, cx = rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w
    for _ in range(rng.integers(2, 5)):
        rad = rng.uniform(0.03, 0.09) * min(h, w)
        region |= (yy - cy) ** 2 + (xx - cx) ** 2 <= rad**2
        step = rng.uniform(0.5, 1.2) * rad  # next disc overlaps this one: one connected hole
        angle = rng.uniform(0, 2 * np.pi)
        cy, cx = cy + step * np.sin(angle), cx + step * np.cos(angle)
    tone = rng.choice([rng.uniform(5, 35), rng.uniform(220, 250)])
    target = tone + rng.normal(0.0, 3.0, base.shape)  # slight sensor-like noise on the flat fill
    return commit(base, target, region)


def _wobbly_region(
    h: int, w: int, rng: np.random.Generator, lo: float, hi: float
) -> tuple[np.ndarray, float]:
    """A smooth soft-edged star-shaped blob: (alpha (H, W) in [0, 1], radius in px)."""
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    radius = rng.uniform(lo, hi) * min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rho, theta = np.hypot(yy - cy, xx - cx), np.arctan2(yy - cy, xx - cx)
    wobble = sum(
        rng.uniform(0.0, 0.25 / k) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in range(2, 6)
    )
    alpha = np.clip((radius * (1.0 + wobble) - rho) / max(2.0, 0.3 * radius), 0.0, 1.0)
    alpha = alpha * alpha * (3 - 2 * alpha)  # smoothstep rim
    return np.where(alpha >= 0.2, alpha, 0.0), radius  # faint rim thresholded away: mask = visible change


def smudge(base: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Loss of detail: inside a wobbly soft-edged outline the texture is blurred and its contrast flattened.

    The mean brightness stays (nearly) the same: only the structure goes, so intensity alone does not tell.
    """
    h, w = base.shape[:2]
    alpha, radius = _wobbly_region(h, w, rng, 0.08, 0.2)
    region = alpha > 0.0
    sigma = rng.uniform(0.04, 0.1) * radius + 1.5  # blur scale grows with the smudge
    blurred = ndimage.gaussian_filter(base.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect")
    mean = blurred[region].mean(axis=0) if region.any() else blurred.mean(axis=(0, 1))
    flat = mean + rng.uniform(0.2, 0.6) * (blurred - mean)  # contrast towards the local mean
    target = base + alpha[..., None] * (flat - base)
    return commit(base, target, region)


def misoriented(base: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Misplaced material: a patch of the same texture, rotated by a non-right angle and rescaled.

    The source is the image itself, seen through a rotation of 20-70 degrees (plus a multiple of 90) about
    another centre and a scale of 0.6-0.8 or 1.3-1.8, pasted with a hard edge inside a wobbly outline.
    """
    h, w = base.shape[:2]
    alpha, _ = _wobbly_region(h, w, rng, 0.1, 0.22)
    region = alpha > 0.0
    angle = np.deg2rad(rng.uniform(20, 70) + 90 * rng.integers(0, 4))  # never a right angle
    scale = rng.choice([rng.uniform(0.6, 0.8), rng.uniform(1.3, 1.8)])  # never ~1
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale  # output -> input coordinates
    matrix = np.array([[cos, -sin], [sin, cos]])
    source_centre = rng.uniform(0.25, 0.75, 2) * (h, w)  # "from elsewhere": another part of the image
    offset = source_centre - matrix @ (np.array([h, w]) / 2)
    warped = np.stack(
        [
            ndimage.affine_transform(base[..., k].astype(np.float32), matrix, offset, order=1, mode="mirror")
            for k in range(base.shape[2])
        ],
        axis=-1,
    )
    target = np.where(region[..., None], warped, base)  # hard edge: the patch is material, not a tint
    return commit(base, target, region)


def particles(base: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Foreign particles: a cluster of 4-12 small compact blobs (radius 1-4 % of the side) of a foreign tone.

    Grey images get a tone far from the local brightness; colour images a saturated colour far from it.
    """
    h, w = base.shape[:2]
    side = min(h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    spread = rng.uniform(0.03, 0.08) * side
    region, shade = np.zeros((h, w), bool), np.zeros((h, w), np.float32)
    for _ in range(rng.integers(4, 13)):
        py, px = cy + rng.normal(0, spread), cx + rng.normal(0, spread)
        r = max(1.2, rng.uniform(0.01, 0.04) * side)
        d2 = ((yy - py) ** 2 + (xx - px) ** 2) / r**2
        blob = d2 <= 1.0
        region |= blob
        shade = np.maximum(shade, np.where(blob, 1.0 - 0.3 * d2, 0.0))  # rounded: brighter centre
    local = base[region].astype(np.float32).mean(axis=0) if region.any() else np.full(base.shape[2], 128.0)
    if base.shape[2] == 1:
        tone = np.array([20.0 if local[0] > 128 else 235.0]) + rng.uniform(-15, 15)
    else:
        tone = np.clip(255.0 - local + rng.uniform(-40, 40, base.shape[2]), 0, 255)  # complementary colour
        tone[rng.integers(0, 3)] = rng.choice([20.0, 235.0])  # saturate one channel
    target = tone * (0.75 + 0.25 * shade[..., None])
    return commit(base, target, region)


DEFECTS: dict[str, Defect] = {
    "scratch": scratch,
    "stain": stain,
    "crack": crack,
    "hole": hole,
    "smudge": smudge,
    "misoriented": misoriented,
    "particles": particles,
}

"""Structured, inpainting-style corruption of image batches, run on whatever device the batch is on.

Regions (rectangles, ellipses, polygons, noise blobs) are overwritten with foreign content so that the
autoencoder learns to replace irregular patterns by normal ones. Everything is batched tensor code:
no per-image Python loop, no numpy. Randomness comes from an optional `torch.Generator`.

Families beyond the paper's (off unless listed in `shapes`/`sources`, so the default stream of
random numbers and every earlier result stay as they were):
- shape "stroke": thin curved strokes (cubic Bezier curves, 1-3 px wide) spanning up to twice the region;
- shape "plasma": multi-octave smooth noise thresholded inside the region's square: fractal outlines,
  often several pieces;
- source "photometric": the image itself with its brightness, contrast and colour changed (no warp);
- source "missing": missing material, a flat dark or bright tone with a little noise.
Rotated and rescaled copies of the image itself are the existing source "self".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SHAPES = ("rectangle", "ellipse", "polygon", "blob", "stroke", "plasma")
PAPER_SHAPES = SHAPES[:4]  # the default: the later families are opt-in
FOREIGN_SOURCES = ("batch", "self", "texture", "external", "photometric", "missing")
FILLS = ("foreign", "blank")
POLYGON_VERTICES = 7


@dataclass
class Regions:
    """Region parameters, one entry per slot: (B, R) as sampled, or (S,) for the S active slots."""

    active: Tensor
    center_x: Tensor  # pixels
    center_y: Tensor
    size_x: Tensor  # full extent in pixels before rotation
    size_y: Tensor
    angle: Tensor  # radians
    shape: Tensor  # index into the configured shapes

    def used(self) -> Regions:
        """Keep only the active slots, flattened in (image, slot) order."""
        keep = self.active
        return Regions(*(getattr(self, f.name)[keep] for f in fields(self)))


def _uniform(shape: Sequence[int], low: float | Tensor, high: float | Tensor, like: Tensor, gen) -> Tensor:
    return low + (high - low) * torch.rand(*shape, device=like.device, generator=gen)


class StructuredCorruption(nn.Module):
    """images (B, C, H, W) in [0, 1] -> (corrupted (B, C, H, W), mask (B, 1, H, W) of changed regions).

    Args:
        p_corrupt: probability that an image gets any region; the others stay clean (identity is learned too).
        max_regions: a corrupted image gets 1..max_regions regions, uniformly.
        min_size, max_size: region side as a fraction of the image side, drawn log-uniformly.
        max_aspect: aspect ratio of a region's envelope, drawn log-uniformly in [1/max_aspect, max_aspect];
            large values add thin, scratch- and crack-like regions.
        fill: "foreign" (objective a, blind filtering) or "blank" (objective b, classic inpainting).
        sources: foreign-content sources: another image of the batch, the same image warped, a
            synthetic texture, or images from `texture_dir` ("external").
        alpha_min: opacity is drawn from U(alpha_min, 1) so that faint defects are covered too.
        jitter: strength of the brightness/contrast jitter of foreign fills.
        opaque_fraction: share of regions pasted as they are, at full opacity and without jitter: misplaced
            material or a foreign part is opaque and keeps its own tone, and with every paste blended or
            re-toned a blend or tone edge is enough to find them all, which real defects do not offer.
        min_scale_change: warped copies are scaled by a factor at least this far from 1, so a shifted copy
            of a periodic texture never lines up with its period (which would be another normal image).
        gaussian_noise_std: identity-anchored noise added to input *and* target (see `anchor_noise`).
    """

    def __init__(
        self,
        p_corrupt: float = 0.9,
        max_regions: int = 4,
        min_size: float = 0.02,
        max_size: float = 0.25,
        max_aspect: float = 2.0,
        shapes: Sequence[str] = PAPER_SHAPES,
        fill: str = "foreign",
        sources: Sequence[str] = ("batch", "self", "texture"),
        alpha_min: float = 0.5,
        jitter: float = 0.2,
        opaque_fraction: float = 0.0,
        min_scale_change: float = 0.25,
        elastic: float = 0.05,
        gaussian_noise_std: float = 0.0,
        texture_dir: str | None = None,
    ) -> None:
        super().__init__()
        unknown = set(shapes) - set(SHAPES)
        if unknown or not shapes:
            raise ValueError(f"corruption.shapes={list(shapes)} must be a non-empty subset of {SHAPES}")
        if fill not in FILLS:
            raise ValueError(f"corruption.fill={fill!r} is not one of {FILLS}")
        if fill == "foreign" and (not sources or set(sources) - set(FOREIGN_SOURCES)):
            raise ValueError(
                f"corruption.sources={list(sources)} must be a non-empty subset of {FOREIGN_SOURCES}"
            )
        if "external" in sources and fill == "foreign" and not texture_dir:
            raise ValueError("corruption.sources contains 'external' but corruption.texture_dir is not set")
        if not 0 < min_size <= max_size <= 1:
            raise ValueError(f"need 0 < corruption.min_size <= max_size <= 1, got {min_size}, {max_size}")
        self.p_corrupt, self.max_regions = p_corrupt, max_regions
        if max_aspect < 1:
            raise ValueError(f"corruption.max_aspect={max_aspect} must be >= 1")
        self.min_size, self.max_size, self.max_aspect = min_size, max_size, max_aspect
        self.shapes, self.fill, self.sources = tuple(shapes), fill, tuple(sources)
        if not 0 <= opaque_fraction <= 1:
            raise ValueError(f"corruption.opaque_fraction={opaque_fraction} must lie in [0, 1]")
        self.alpha_min, self.jitter, self.opaque_fraction = alpha_min, jitter, opaque_fraction
        self.min_scale_change, self.elastic = min_scale_change, elastic
        self.gaussian_noise_std = gaussian_noise_std
        pool = load_texture_pool(Path(texture_dir)) if texture_dir else torch.empty(0)
        self.register_buffer("texture_pool", pool, persistent=False)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = images.shape
        regions = self.sample_regions(b, h, w, images, generator)
        image_of_slot, rank_of_slot = regions.active.nonzero(as_tuple=True)  # (S,) each
        used = regions.used()
        # Only active slots are rasterised and filled: ~half of all slots, at no loss of generality.
        masks = region_masks(used, self.shapes, h, w, generator)  # (S, H, W) bool
        plain_fills = self.sample_fills(images, image_of_slot, generator)  # (S, C, H, W)
        fills = plain_fills if self.fill == "blank" else _jitter(plain_fills, self.jitter, generator)
        alpha = _uniform((len(used.shape), 1, 1, 1), self.alpha_min, 1.0, images, generator)
        if self.opaque_fraction > 0:  # drawn last, so that opaque_fraction=0 keeps the earlier random stream
            opaque = torch.rand(len(alpha), 1, 1, 1, device=images.device, generator=generator)
            opaque = opaque < self.opaque_fraction
            fills = torch.where(opaque, plain_fills, fills)
            alpha = torch.where(opaque, torch.ones_like(alpha), alpha)
        weights = masks[:, None].to(images.dtype) * alpha  # (S, 1, H, W)
        corrupted, mask = images.clone(), images.new_zeros(b, 1, h, w)
        for r in range(self.max_regions):  # later regions are painted over earlier ones
            slot = rank_of_slot == r
            owner = image_of_slot[slot]  # unique within one rank, so indexed writes do not collide
            corrupted[owner] += weights[slot] * (fills[slot] - corrupted[owner])
            mask[owner] = torch.maximum(mask[owner], masks[slot, None].to(images.dtype))
        return corrupted, mask

    def anchor_noise(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Add the identity-anchored Gaussian noise that stays in the target (no-op at std 0)."""
        if self.gaussian_noise_std <= 0:
            return images
        noise = torch.randn(images.shape, device=images.device, generator=generator)
        return images + self.gaussian_noise_std * noise

    def sample_regions(self, b: int, h: int, w: int, like: Tensor, gen=None) -> Regions:
        """Draw which slots are used and each region's position, size, rotation and shape."""
        r = self.max_regions
        corrupt = torch.rand(b, 1, device=like.device, generator=gen) < self.p_corrupt
        count = torch.randint(1, r + 1, (b, 1), device=like.device, generator=gen)
        active = corrupt & (torch.arange(r, device=like.device) < count)
        side = min(h, w)
        log_size = _uniform((b, r), math.log(self.min_size), math.log(self.max_size), like, gen)
        log_aspect = _uniform((b, r), -math.log(self.max_aspect), math.log(self.max_aspect), like, gen)
        size = side * log_size.exp()
        return Regions(
            active=active,
            center_x=_uniform((b, r), 0, w, like, gen),
            center_y=_uniform((b, r), 0, h, like, gen),
            size_x=size * (log_aspect / 2).exp(),
            size_y=size * (-log_aspect / 2).exp(),
            angle=_uniform((b, r), 0, 2 * math.pi, like, gen),
            shape=torch.randint(len(self.shapes), (b, r), device=like.device, generator=gen),
        )

    def sample_fills(self, images: Tensor, owner: Tensor, gen=None) -> Tensor:
        """Content for each slot of image `owner[s]`, before jitter: (B, C, H, W), (S,) -> (S, C, H, W)."""
        _, c, h, w = images.shape
        n = len(owner)
        if self.fill == "blank":
            return _blank(n, c, h, w, images, gen)
        choice = torch.randint(len(self.sources), (n,), device=images.device, generator=gen)
        fills = torch.empty(n, c, h, w, device=images.device, dtype=images.dtype)
        for index, source in enumerate(self.sources):
            slots = (choice == index).nonzero().squeeze(1)
            if slots.numel():
                fills[slots] = self._foreign(source, images, owner[slots], gen)
        return fills

    def _foreign(self, source: str, images: Tensor, owner: Tensor, gen) -> Tensor:
        b, c, h, w = images.shape
        if source == "texture":
            return _synthetic_texture(len(owner), c, h, w, images, gen)
        if source == "photometric":
            return _photometric(images[owner], gen)
        if source == "missing":
            return _missing(len(owner), c, h, w, images, gen)
        if source == "batch" and b > 1:
            offset = torch.randint(1, b, owner.shape, device=images.device, generator=gen)
            src = images[(owner + offset) % b]  # another image of the batch, never the owner
        elif source == "external":
            pick = torch.randint(len(self.texture_pool), owner.shape, device=images.device, generator=gen)
            src = _match_channels(self.texture_pool[pick], c)
            src = F.interpolate(src, size=(h, w), mode="bilinear", align_corners=False)
        else:  # "self", or "batch" with a batch of one
            src = images[owner]
        return _random_warp(src, self.min_scale_change, self.elastic, gen)


def region_masks(regions: Regions, shapes: Sequence[str], h: int, w: int, gen=None) -> Tensor:
    """Rasterise flattened regions: (S,) parameters -> (S, H, W) bool masks."""
    like = regions.center_x
    masks = torch.zeros(len(like), h, w, dtype=torch.bool, device=like.device)
    ys = torch.arange(h, device=like.device, dtype=like.dtype).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=like.device, dtype=like.dtype).view(1, 1, w) + 0.5
    for index, name in enumerate(shapes):
        pick = (regions.shape == index).nonzero().squeeze(1)
        if not pick.numel():
            continue
        cx, cy = regions.center_x[pick].view(-1, 1, 1), regions.center_y[pick].view(-1, 1, 1)
        cos, sin = regions.angle[pick].cos().view(-1, 1, 1), regions.angle[pick].sin().view(-1, 1, 1)
        # Region frame scaled so that the shape's envelope is the unit square / disc: (P, H, W).
        u = ((xs - cx) * cos + (ys - cy) * sin) / (regions.size_x[pick].view(-1, 1, 1) / 2)
        v = ((ys - cy) * cos - (xs - cx) * sin) / (regions.size_y[pick].view(-1, 1, 1) / 2)
        if name == "rectangle":
            masks[pick] = torch.maximum(u.abs(), v.abs()) <= 1
        elif name == "ellipse":
            masks[pick] = u.square() + v.square() <= 1
        elif name == "polygon":
            masks[pick] = _polygon(u, v, gen)
        elif name == "stroke":
            masks[pick] = _stroke(u, v, h, w, gen)
        elif name == "plasma":
            masks[pick] = _plasma(u, v, gen)
        else:
            masks[pick] = _blob(u, v, gen)
    return masks


def _polygon(u: Tensor, v: Tensor, gen) -> Tensor:
    """Star-shaped polygon with equally spaced vertices at random radii in [0.4, 1]."""
    k = POLYGON_VERTICES
    radii = _uniform((len(u), k), 0.4, 1.0, u, gen)
    step = 2 * math.pi / k
    phi = torch.atan2(v, u).remainder(2 * math.pi)
    edge = (phi / step).floor().long().clamp_max(k - 1)  # (P, H, W) index of the edge's first vertex
    t = phi - edge * step
    r0 = radii.gather(1, edge.flatten(1)).view_as(u)
    r1 = radii.gather(1, ((edge + 1) % k).flatten(1)).view_as(u)
    # Radius of the straight edge between the two vertices along direction phi.
    boundary = r0 * r1 * math.sin(step) / (r0 * t.sin() + r1 * (step - t).sin())
    return u.square() + v.square() <= boundary.square()


def _blob(u: Tensor, v: Tensor, gen) -> Tensor:
    """Thresholded smooth noise inside the elliptic envelope: irregular, Perlin-like outlines."""
    lattice = torch.rand(len(u), 1, 6, 6, device=u.device, generator=gen)
    grid = torch.stack([u, v], dim=-1)  # (P, H, W, 2): the region frame doubles as sampling grid
    noise = F.grid_sample(lattice, grid, mode="bicubic", align_corners=True)[:, 0]
    falloff = 1 - (u.square() + v.square())
    return (falloff > 0) & (falloff + 0.8 * (noise - 0.5) > 0.3)


def _stroke(u: Tensor, v: Tensor, h: int, w: int, gen) -> Tensor:
    """Thin curved strokes: a cubic Bezier curve through the region frame, 1-3 px wide. (P, H, W) -> bool.

    Control points lie in [-2, 2]^2 of the region frame, so a stroke spans up to twice the region's extent
    while covering only a few hundred pixels. The curve is sampled densely, scattered into the mask and
    dilated; pixel positions are found from (u, v) themselves, so no second copy of the frame is needed.
    """
    p = len(u)
    ctrl = _uniform((p, 4, 2), -2.0, 2.0, u, gen)  # (P, 4, 2) control points in the region frame
    width = torch.randint(1, 4, (p,), device=u.device, generator=gen)  # px
    n = 4 * (h + w)  # dense enough that 1 px curves have no gaps
    t = torch.linspace(0, 1, n, device=u.device, dtype=u.dtype).view(1, n, 1)
    bernstein = torch.cat([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t**2, t**3], dim=2)  # (1, n, 4)
    curve = bernstein @ ctrl  # (P, n, 2) points in (u, v)
    # Back to pixels: the frame is affine in (x, y), so three pixels of (u, v) give the map exactly.
    u0, ux, uy = u[:, 0, 0], u[:, 0, 1] - u[:, 0, 0], u[:, 1, 0] - u[:, 0, 0]  # u = u0 + ux*x + uy*y
    v0, vx, vy = v[:, 0, 0], v[:, 0, 1] - v[:, 0, 0], v[:, 1, 0] - v[:, 0, 0]
    det = (ux * vy - uy * vx).view(p, 1)
    du, dv = curve[..., 0] - u0.view(p, 1), curve[..., 1] - v0.view(p, 1)
    x = ((vy.view(p, 1) * du - uy.view(p, 1) * dv) / det).round().long()  # (P, n)
    y = ((ux.view(p, 1) * dv - vx.view(p, 1) * du) / det).round().long()
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    flat = torch.where(inside, y * w + x, h * w)  # outside points go to a spare column, dropped below
    line = torch.zeros(p, h * w + 1, device=u.device, dtype=u.dtype).scatter_(1, flat, 1.0)
    line = line[:, : h * w].view(p, 1, h, w)
    out = torch.zeros(p, h, w, dtype=torch.bool, device=u.device)
    for k in (1, 2, 3):
        pick = (width == k).nonzero().squeeze(1)
        if pick.numel():
            padded = F.pad(line[pick], ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2))
            out[pick] = F.max_pool2d(padded, k, stride=1)[:, 0] > 0
    return out


def _plasma(u: Tensor, v: Tensor, gen) -> Tensor:
    """Smooth fractal noise (3 octaves, Perlin/plasma-like) thresholded inside the square |u|, |v| <= 1."""
    grid = torch.stack([u, v], dim=-1)  # (P, H, W, 2)
    noise = torch.zeros_like(u)
    for octave in range(3):
        cells = 4 * 2**octave
        lattice = torch.rand(len(u), 1, cells, cells, device=u.device, generator=gen)
        noise += 0.5**octave * F.grid_sample(lattice, grid, mode="bicubic", align_corners=True)[:, 0]
    level = _uniform((len(u), 1, 1), 0.5, 0.6, u, gen)  # a 0.5-0.6 threshold of the [0, 1] noise
    return (torch.maximum(u.abs(), v.abs()) <= 1) & (noise / 1.75 > level)


def _photometric(src: Tensor, gen) -> Tensor:
    """The image itself with a local brightness, contrast and colour change: (N, C, H, W) -> same."""
    n, c = src.shape[:2]
    contrast = _uniform((n, 1, 1, 1), math.log(0.3), math.log(1.6), src, gen).exp()
    sign = torch.where(torch.rand(n, 1, 1, 1, device=src.device, generator=gen) < 0.5, -1.0, 1.0)
    shift = sign * _uniform((n, 1, 1, 1), 0.08, 0.3, src, gen)  # never ~0: the region always changes
    colour = _uniform((n, c, 1, 1), -0.1, 0.1, src, gen) if c > 1 else 0.0  # tint of colour images
    mean = src.mean(dim=(1, 2, 3), keepdim=True)
    return ((src - mean) * contrast + mean + shift + colour).clamp(0, 1)


def _missing(n: int, c: int, h: int, w: int, like: Tensor, gen) -> Tensor:
    """Missing material: a flat dark (0-0.15) or bright (0.85-1) tone, the same in every channel, + noise."""
    dark = torch.rand(n, 1, 1, 1, device=like.device, generator=gen) < 0.5
    tone = torch.where(
        dark, _uniform((n, 1, 1, 1), 0.0, 0.15, like, gen), _uniform((n, 1, 1, 1), 0.85, 1.0, like, gen)
    )
    noise = 0.02 * torch.randn(n, 1, h, w, device=like.device, generator=gen)
    return (tone + noise).clamp(0, 1).expand(n, c, h, w)


def _random_warp(src: Tensor, min_scale_change: float, elastic: float, gen) -> Tensor:
    """Rotate, rescale (never by ~1), translate and elastically bend a batch of images."""
    n, _, h, w = src.shape
    angle = _uniform((n,), 0, 2 * math.pi, src, gen)
    magnitude = _uniform((n,), math.log1p(min_scale_change), math.log(2.0), src, gen)
    sign = torch.where(torch.rand(n, device=src.device, generator=gen) < 0.5, -1.0, 1.0)
    scale = (sign * magnitude).exp()
    cos, sin = angle.cos() * scale, angle.sin() * scale
    shift = _uniform((n, 2), -1, 1, src, gen)
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if elastic > 0:
        displacement = _uniform((n, 2, 4, 4), -elastic, elastic, src, gen)
        grid = grid + F.interpolate(displacement, size=(h, w), mode="bicubic", align_corners=True).permute(
            0, 2, 3, 1
        )
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _synthetic_texture(n: int, c: int, h: int, w: int, like: Tensor, gen) -> Tensor:
    """Smoothed colour noise or oriented stripes, half of each."""
    cells = int(torch.randint(3, 12, (1,), device=like.device, generator=gen))  # noise grain size
    noise = F.interpolate(
        _uniform((n, c, cells, cells), 0, 1, like, gen), size=(h, w), mode="bicubic", align_corners=False
    )
    ys = torch.linspace(-1, 1, h, device=like.device).view(1, h, 1)
    xs = torch.linspace(-1, 1, w, device=like.device).view(1, 1, w)
    angle = _uniform((n, 1, 1), 0, math.pi, like, gen)
    frequency = _uniform((n, 1, 1), 2, 16, like, gen)
    wave = torch.sin(math.pi * frequency * (xs * angle.cos() + ys * angle.sin()))  # (N, H, W)
    low, high = _uniform((n, c, 1, 1), 0, 1, like, gen), _uniform((n, c, 1, 1), 0, 1, like, gen)
    stripes = low + (high - low) * (wave[:, None] > 0).to(like.dtype)
    use_stripes = torch.rand(n, 1, 1, 1, device=like.device, generator=gen) < 0.5
    return torch.where(use_stripes, stripes, noise.clamp(0, 1))


def _blank(n: int, c: int, h: int, w: int, like: Tensor, gen) -> Tensor:
    """Objective (b): a constant colour or uniform noise, half of each."""
    constant = _uniform((n, c, 1, 1), 0, 1, like, gen).expand(n, c, h, w)
    noise = _uniform((n, c, h, w), 0, 1, like, gen)
    use_noise = torch.rand(n, 1, 1, 1, device=like.device, generator=gen) < 0.5
    return torch.where(use_noise, noise, constant)


def _jitter(fills: Tensor, strength: float, gen) -> Tensor:
    """Random brightness and contrast per fill, so pasted content never matches its source exactly."""
    if strength <= 0:
        return fills
    n = fills.shape[0]
    contrast = _uniform((n, 1, 1, 1), -strength, strength, fills, gen).exp()
    brightness = _uniform((n, 1, 1, 1), -strength, strength, fills, gen) / 2
    mean = fills.mean(dim=(1, 2, 3), keepdim=True)
    return ((fills - mean) * contrast + mean + brightness).clamp(0, 1)


def _match_channels(images: Tensor, channels: int) -> Tensor:
    if images.shape[1] == channels:
        return images
    if channels == 1:
        return images.mean(dim=1, keepdim=True)
    return images[:, :1].expand(-1, channels, -1, -1)


def load_texture_pool(folder: Path, size: int = 256) -> Tensor:
    """Load every image under `folder` once, as (K, 3, size, size) floats in [0, 1]."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    files = sorted(
        p for p in folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".bmp", ".tif"}
    )
    if not files:
        raise FileNotFoundError(f"corruption.texture_dir={folder} contains no images (png, jpg, bmp, tif)")
    tiles = []
    for path in files:
        with Image.open(path) as image:
            tiles.append(pil_to_tensor(image.convert("RGB").resize((size, size), Image.BILINEAR)))
    return torch.stack(tiles).float() / 255

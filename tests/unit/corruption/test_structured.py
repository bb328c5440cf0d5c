import math

import numpy as np
import pytest
import torch
from PIL import Image

from anomaly_ae.corruption.structured import SHAPES, StructuredCorruption, region_masks


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_same_seed_same_output_and_other_seed_differs():
    images = torch.rand(8, 3, 64, 64)
    corruption = StructuredCorruption()
    a, mask_a = corruption(images, generator(1))
    b, mask_b = corruption(images, generator(1))
    c, _ = corruption(images, generator(2))
    assert torch.equal(a, b) and torch.equal(mask_a, mask_b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("fill", ["foreign", "blank"])
def test_pixels_change_only_inside_the_mask(fill):
    images = torch.rand(16, 3, 48, 64)
    corrupted, mask = StructuredCorruption(fill=fill)(images, generator())
    assert corrupted.shape == images.shape and mask.shape == (16, 1, 48, 64)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    outside = (corrupted - images).abs() * (1 - mask)
    assert outside.max() == 0
    changed = (corrupted - images).abs().amax(dim=1, keepdim=True) > 0
    # Almost every masked pixel really changes (a fill can coincide with the original only by chance).
    assert changed[mask.bool()].float().mean() > 0.95


def test_region_count_and_corrupted_share_follow_the_config():
    corruption = StructuredCorruption(p_corrupt=0.7, max_regions=3)
    regions = corruption.sample_regions(20000, 64, 64, torch.empty(0), generator())
    counts = regions.active.sum(dim=1)
    assert (counts > 0).float().mean().item() == pytest.approx(0.7, abs=0.015)
    histogram = torch.bincount(counts[counts > 0], minlength=4)[1:].float() / (counts > 0).sum()
    assert torch.allclose(histogram, torch.full((3,), 1 / 3), atol=0.015)
    # Slots are filled in order: slot r is used only if slot r-1 is.
    assert not (regions.active[:, 1:] & ~regions.active[:, :-1]).any()


def test_region_sizes_are_log_uniform_within_bounds():
    corruption = StructuredCorruption(min_size=0.05, max_size=0.2)
    regions = corruption.sample_regions(20000, 100, 100, torch.empty(0), generator())
    side = (regions.size_x * regions.size_y).sqrt() / 100  # geometric mean of the two extents
    assert side.min() >= 0.05 - 1e-6 and side.max() <= 0.2 + 1e-6
    assert side.log().mean().item() == pytest.approx((math.log(0.05) + math.log(0.2)) / 2, abs=0.01)


@pytest.mark.parametrize(("shape", "area_factor"), [("rectangle", 1.0), ("ellipse", math.pi / 4)])
def test_mask_area_matches_the_region_size(shape, area_factor):
    corruption = StructuredCorruption(shapes=[shape], min_size=0.1, max_size=0.3, p_corrupt=1.0)
    regions = corruption.sample_regions(400, 128, 128, torch.empty(0), generator()).used()
    masks = region_masks(regions, [shape], 128, 128)
    inside = (
        (regions.center_x > 45) & (regions.center_x < 83) & (regions.center_y > 45) & (regions.center_y < 83)
    )  # regions far from the border are not clipped
    expected = area_factor * regions.size_x * regions.size_y
    ratio = masks.sum(dim=(1, 2))[inside].float() / expected[inside]
    assert ratio.mean().item() == pytest.approx(1.0, abs=0.03)


def test_every_shape_is_drawn_and_non_empty():
    corruption = StructuredCorruption(p_corrupt=1.0, min_size=0.2, max_size=0.25, shapes=SHAPES)
    regions = corruption.sample_regions(64, 64, 64, torch.empty(0), generator()).used()
    masks = region_masks(regions, SHAPES, 64, 64, generator())
    for index, name in enumerate(SHAPES):
        drawn = regions.shape == index
        assert drawn.any(), name
        assert (masks[drawn].sum(dim=(1, 2)) > 0).all(), name


def test_no_corruption_probability_is_the_identity():
    images = torch.rand(4, 1, 32, 32)
    corrupted, mask = StructuredCorruption(p_corrupt=0.0)(images, generator())
    assert torch.equal(corrupted, images) and mask.sum() == 0


def test_warped_self_copy_does_not_line_up_with_a_periodic_texture():
    # Stripes of period 8: a plain shifted copy could be pixel-identical to the original.
    x = torch.arange(64).float()
    images = (0.5 + 0.5 * torch.sin(2 * math.pi * x / 8)).expand(32, 1, 64, 64).contiguous()
    corruption = StructuredCorruption(
        sources=["self"], p_corrupt=1.0, alpha_min=1.0, jitter=0.0, min_size=0.2
    )
    corrupted, mask = corruption(images, generator())
    per_image = ((corrupted - images).abs() * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3))
    assert per_image.min() > 0.1  # every pasted region differs clearly from what it replaced


def test_external_textures_are_used(tmp_path):
    for i in range(2):
        Image.fromarray(np.full((20, 20, 3), 255 * i, np.uint8)).save(tmp_path / f"t{i}.png")
    corruption = StructuredCorruption(
        sources=["external"], texture_dir=str(tmp_path), jitter=0.0, alpha_min=1.0
    )
    assert corruption.texture_pool.shape == (2, 3, 256, 256)
    images = torch.full((8, 1, 32, 32), 0.5)
    corrupted, mask = corruption(images, generator())
    assert set(corrupted[mask.bool().expand_as(corrupted)].unique().tolist()) <= {0.0, 1.0}


def test_invalid_configuration_is_named():
    with pytest.raises(ValueError, match=r"corruption.shapes=\['star'\] must be a non-empty subset of"):
        StructuredCorruption(shapes=["star"])
    with pytest.raises(ValueError, match="corruption.sources contains 'external' but corruption.texture_dir"):
        StructuredCorruption(sources=["external"])


def test_anchor_noise_is_off_by_default_and_seeded_when_on():
    images = torch.rand(2, 1, 8, 8)
    assert StructuredCorruption().anchor_noise(images) is images
    noisy = StructuredCorruption(gaussian_noise_std=0.05)
    a, b = noisy.anchor_noise(images, generator(3)), noisy.anchor_noise(images, generator(3))
    assert torch.equal(a, b) and (a - images).std().item() == pytest.approx(0.05, rel=0.3)


def test_aspect_ratio_range_follows_max_aspect():
    regions = StructuredCorruption(max_aspect=8.0).sample_regions(20000, 64, 64, torch.empty(0), generator())
    aspect = (regions.size_x / regions.size_y).log()
    assert aspect.abs().max() <= math.log(8.0) + 1e-5
    assert aspect.abs().max() > math.log(7.0)  # the range is used, not just allowed
    with pytest.raises(ValueError, match=r"corruption.max_aspect=0.5 must be >= 1"):
        StructuredCorruption(max_aspect=0.5)


# The later families (off by default): thin strokes, fractal-noise regions, photometric and missing fills.
NEW_FAMILIES = [
    {"shapes": ["stroke"]},
    {"shapes": ["plasma"]},
    {"sources": ["photometric"]},
    {"sources": ["missing"]},
]


@pytest.mark.parametrize("family", NEW_FAMILIES, ids=lambda f: next(iter(f.values()))[0])
def test_new_family_is_reproducible_and_changes_exactly_the_masked_pixels(family):
    images = torch.rand(16, 3, 64, 64)
    corruption = StructuredCorruption(p_corrupt=1.0, **family)
    a, mask_a = corruption(images, generator(5))
    b, mask_b = corruption(images, generator(5))
    c, _ = corruption(images, generator(6))
    assert torch.equal(a, b) and torch.equal(mask_a, mask_b) and not torch.equal(a, c)
    assert mask_a.sum() > 0
    assert ((a - images).abs() * (1 - mask_a)).max() == 0  # nothing changes outside the mask
    changed = (a - images).abs().amax(dim=1, keepdim=True) > 0
    assert changed[mask_a.bool()].float().mean() > 0.99  # and (almost) every masked pixel changes


def test_default_stream_is_unchanged_by_the_new_families():
    """Listing the old shapes and sources explicitly gives bit-identical output: old runs reproduce."""
    images = torch.rand(8, 3, 32, 32)
    old = StructuredCorruption(
        shapes=("rectangle", "ellipse", "polygon", "blob"), sources=("batch", "self", "texture")
    )
    assert torch.equal(StructuredCorruption()(images, generator(2))[0], old(images, generator(2))[0])


def _boundary_pixels(masks: torch.Tensor) -> torch.Tensor:
    """Per mask, the count of mask pixels with a 4-neighbour outside the mask (image border = outside)."""
    padded = torch.nn.functional.pad(masks[:, None].float(), (1, 1, 1, 1))
    cross = (
        padded[:, 0, :-2, 1:-1] * padded[:, 0, 2:, 1:-1] * padded[:, 0, 1:-1, :-2] * padded[:, 0, 1:-1, 2:]
    )
    return (masks.float() * (1 - cross)).sum(dim=(1, 2))


def test_stroke_masks_are_thin_and_plasma_masks_are_fragmented():
    from scipy import ndimage

    shapes = ["stroke", "plasma", "ellipse"]
    corruption = StructuredCorruption(p_corrupt=1.0, shapes=shapes, min_size=0.15, max_size=0.25)
    regions = corruption.sample_regions(300, 128, 128, torch.empty(0), generator()).used()
    masks = region_masks(regions, shapes, 128, 128, generator())
    area = masks.sum(dim=(1, 2)).float()
    ratio = area / _boundary_pixels(masks).clamp(min=1)  # area / perimeter in px: about half the width
    stroke, plasma, ellipse = ((regions.shape == k) & (area > 0) for k in range(3))
    assert stroke.sum() > 50 and plasma.sum() > 50 and ellipse.sum() > 50
    # 1-3 px wide curves (a tight loop of a 3 px curve can fill in, hence the 95th percentile)
    assert ratio[stroke].quantile(0.95) <= 2.5 and ratio[stroke].median() <= 1.6
    assert ratio[ellipse].median() > 2 * ratio[stroke].median()  # same envelopes, filled: far thicker
    assert (area[stroke] / 128**2).max() < 0.03  # a few hundred pixels at most
    extent = torch.maximum(masks.any(dim=2).sum(dim=1), masks.any(dim=1).sum(dim=1)).float()
    assert (extent[stroke] > 4 * ratio[stroke]).float().mean() > 0.9  # long compared with their width
    # Plasma: fractal outlines, often in several pieces, inside the region's square; ellipses: one piece.
    pieces = torch.tensor([ndimage.label(m.numpy())[1] for m in masks])
    assert (pieces[plasma] > 1).float().mean() > 0.3 and (pieces[ellipse] == 1).all()
    assert (_boundary_pixels(masks) / area.clamp(min=1))[plasma].median() > (
        _boundary_pixels(masks) / area.clamp(min=1)
    )[ellipse].median()


def test_missing_material_is_dark_or_bright_and_photometric_keeps_the_structure():
    images = 0.3 + 0.4 * torch.rand(32, 1, 64, 64)  # mid-grey texture in [0.3, 0.7]
    missing = StructuredCorruption(p_corrupt=1.0, sources=["missing"], alpha_min=1.0, jitter=0.0)
    corrupted, mask = missing(images, generator())
    values = corrupted[mask.bool()]
    assert ((values < 0.25) | (values > 0.75)).float().mean() > 0.95
    photometric = StructuredCorruption(
        p_corrupt=1.0, shapes=["rectangle"], sources=["photometric"], alpha_min=1.0, jitter=0.0, min_size=0.3,
        max_size=0.3, max_regions=1,
    )  # fmt: skip
    corrupted, mask = photometric(images, generator())
    for k in range(len(images)):  # inside the region: an affine function of the original pixels
        inside = mask[k, 0].bool()
        x, y = images[k, 0][inside], corrupted[k, 0][inside]
        unclipped = (y > 0) & (y < 1)
        corr = torch.corrcoef(torch.stack([x[unclipped], y[unclipped]]))[0, 1]
        assert corr > 0.999
        assert (y - x).abs().mean() > 0.03


def test_opaque_regions_are_pasted_without_blend_or_jitter_and_the_rest_as_before():
    """opaque_fraction=1 equals alpha_min=1, jitter=0; at 0.5 each region is one of the two, half and half."""
    images = torch.rand(64, 3, 32, 32)
    common = {"p_corrupt": 1.0, "max_regions": 1, "alpha_min": 0.5, "jitter": 0.5}
    blended, mask = StructuredCorruption(**common)(images, generator(4))
    opaque, opaque_mask = StructuredCorruption(**common, opaque_fraction=1.0)(images, generator(4))
    plain, _ = StructuredCorruption(**{**common, "alpha_min": 1.0, "jitter": 0.0})(images, generator(4))
    assert torch.equal(opaque, plain) and torch.equal(opaque_mask, mask)
    mixed, mixed_mask = StructuredCorruption(**common, opaque_fraction=0.5)(images, generator(4))
    assert torch.equal(mixed_mask, mask)
    painted = mask.flatten(1).any(1)  # a region too small to cover a pixel centre changes nothing
    as_opaque = (mixed == opaque).flatten(1).all(1)[painted]
    as_blended = (mixed == blended).flatten(1).all(1)[painted]
    assert painted.sum() > 50 and (as_opaque ^ as_blended).all()  # one or the other, never both or neither
    n = int(painted.sum())  # Binomial(n, 0.5) lies within 3.5 std of n / 2 with probability > 0.999
    assert abs(int(as_opaque.sum()) - n / 2) <= 3.5 * (n / 4) ** 0.5
    with pytest.raises(ValueError, match=r"corruption.opaque_fraction=1.5 must lie in \[0, 1\]"):
        StructuredCorruption(opaque_fraction=1.5)

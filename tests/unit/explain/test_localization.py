"""Localisation metrics of heat maps against masks, and the hand-made colour maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anomaly_ae.explain.localization import mass_accuracy, pointing_game, rank_accuracy
from anomaly_ae.reporting import plots


def square_mask() -> torch.Tensor:
    mask = torch.zeros(1, 8, 8, dtype=torch.bool)
    mask[0, 2:4, 2:4] = True  # 4 of 64 pixels
    return mask


def test_perfect_and_missing_heatmaps():
    mask = square_mask()
    inside = mask.float()
    assert mass_accuracy(inside, mask).item() == 1.0
    assert rank_accuracy(inside, mask).item() == 1.0
    assert pointing_game(inside, mask).item() == 1.0
    outside = 1 - inside
    assert mass_accuracy(outside, mask).item() == 0.0
    assert rank_accuracy(outside, mask).item() == 0.0
    assert pointing_game(outside, mask).item() == 0.0


def test_hand_made_values():
    mask = square_mask()
    heat = torch.zeros(1, 8, 8)
    heat[0, 2, 2], heat[0, 2, 3] = 3.0, -5.0  # inside: one positive, one negative pixel
    heat[0, 7, 7], heat[0, 6, 6] = 1.0, 2.0  # outside
    assert mass_accuracy(heat, mask).item() == pytest.approx(3 / 6)  # negative relevance is not mass
    # top 4: 3, 2, 1, then one of the 60 pixels tied at 0, of which 2 lie in the mask
    assert rank_accuracy(heat, mask).item() == pytest.approx((1 + 2 / 60) / 4)
    assert pointing_game(heat, mask).item() == 1.0


def test_ties_score_their_expected_value_and_tolerance_grows_the_mask():
    mask = square_mask()
    flat = torch.ones(1, 8, 8)
    assert mass_accuracy(flat, mask).item() == pytest.approx(4 / 64)
    assert rank_accuracy(flat, mask).item() == pytest.approx(4 / 64)
    assert pointing_game(flat, mask).item() == pytest.approx(4 / 64)
    near = torch.zeros(1, 8, 8)
    near[0, 5, 5] = 1.0  # two pixels diagonal from the mask's corner (3, 3)
    assert pointing_game(near, mask, tolerance=1).item() == 0.0
    assert pointing_game(near, mask, tolerance=2).item() == 1.0


def test_no_positive_relevance_gives_zero_mass():
    assert mass_accuracy(-torch.ones(1, 8, 8), square_mask()).item() == 0.0


def test_signed_colour_map_is_white_at_zero_red_positive_blue_negative():
    rgb = plots.signed_rgb(np.array([[-1.0, 0.0, 1.0]]), limit=1.0)
    assert rgb[0].tolist() == [[0, 0, 255], [255, 255, 255], [255, 0, 0]]
    assert plots.signed_rgb(np.zeros((4, 4))).min() == 255  # an all-zero map stays white, no NaN


def test_sequential_map_and_grid_sizes():
    hot = plots.magnitude_rgb(np.array([[0.0, 1.0]]), limit=1.0)
    assert hot[0, 0].tolist() == [0, 0, 0] and hot[0, 1].tolist() == [255, 255, 255]
    tile = plots.image_rgb(torch.rand(1, 16, 16))
    canvas = plots.grid([[tile, tile, tile], [tile, tile, tile]], ["a", "b", "c"], tile=32)
    assert canvas.size == (96, 14 + 64)

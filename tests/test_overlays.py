"""Prediction overlays: colours, blending and the grid saved as PNG and sent to W&B."""

from __future__ import annotations

import numpy as np

from lightseg.visualize import GAP, class_colors, overlay, overlay_grid


def test_class_colours_spread_index_bits_over_rgb():
    colors = class_colors()
    assert colors[0].tolist() == [0, 0, 0]  # background
    assert colors[1].tolist() == [128, 0, 0]
    assert colors[2].tolist() == [0, 128, 0]
    assert colors[3].tolist() == [128, 128, 0]
    assert colors[8].tolist() == [64, 0, 0]
    assert colors[255].tolist() == [224, 224, 192]  # ignore
    assert len({tuple(c) for c in colors[:21]}) == 21


def test_overlay_blends_class_colour_and_leaves_background():
    image = np.full((1, 3, 3), 100, np.uint8)
    mask = np.array([[0, 1, 255]], np.uint8)
    out = overlay(image, mask, class_colors(), alpha=0.5)
    # 0.5 * 100 + 0.5 * colour
    assert out.tolist() == [[[100, 100, 100], [114, 50, 50], [162, 162, 146]]]


def test_grid_has_a_row_per_sample_and_image_truth_prediction_columns():
    images = np.zeros((2, 4, 5, 3), np.uint8)
    truths = np.zeros((2, 4, 5), np.uint8)
    predictions = np.ones((2, 4, 5), np.uint8)
    grid = overlay_grid(images, truths, predictions, ["background", "lesion"], alpha=1.0)
    assert grid.shape[1] == 3 * 5 + 2 * GAP
    assert grid[0, 2 * (5 + GAP)].tolist() == [128, 0, 0]  # prediction panel: all lesion
    assert grid[0, 5 + GAP].tolist() == [0, 0, 0]  # truth panel: background only
    assert grid[4 + GAP, 0].tolist() == [0, 0, 0]  # second row starts after a gap
    assert grid[4, 0].tolist() == [255, 255, 255]  # the gap

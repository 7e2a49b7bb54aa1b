"""The stored heatmap is a colour layer (RGBA) that a viewer lays over the image; the
composite is what the PACS overlay burns in. Neither needs torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ml.colormap import JET, composite, heat_layer


def ramp_cam() -> np.ndarray:
    return np.tile(np.linspace(0.0, 1.0, 8, dtype=np.float32), (8, 1))  # cold left, hot right


def test_the_layer_is_jet_coloured_and_as_opaque_as_the_map_is_hot():
    layer = heat_layer(ramp_cam(), (64, 32))
    assert layer.mode == "RGBA" and layer.size == (64, 32)
    rgba = np.asarray(layer)
    assert rgba[:, 0, 3].max() == 0 and rgba[:, -1, 3].min() == 255  # clear ... opaque
    assert np.all(np.diff(rgba[0, :, 3].astype(int)) >= 0)  # alpha rises with the map
    assert tuple(rgba[0, -1, :3]) == tuple(JET[255])  # red at the peak
    assert tuple(rgba[0, 0, :3]) == tuple(JET[0])  # dark blue where cold (and clear)


def test_the_composite_keeps_the_film_where_cold_and_shows_colour_where_hot():
    film = Image.fromarray(np.full((32, 64), 100, np.uint8), mode="L")
    layer = heat_layer(ramp_cam(), (64, 32))
    shown = np.asarray(composite(film, layer, opacity=1.0), np.int16)
    assert tuple(shown[0, 0]) == (100, 100, 100)  # transparent: the film as it is
    assert tuple(shown[0, -1]) == tuple(JET[255])  # opaque at full opacity: the colour
    half = np.asarray(composite(film, layer, opacity=0.5), np.int16)
    assert np.abs(half[0, -1] - (np.asarray(JET[255]) + 100) / 2).max() <= 1
    untouched = np.asarray(composite(film, layer, opacity=0.0))
    assert np.all(untouched == 100)


def test_an_older_rgb_overlay_is_shown_as_it_was_drawn():
    old = Image.new("RGB", (16, 16), (10, 20, 30))
    assert composite(Image.new("L", (16, 16)), old).getpixel((0, 0)) == (10, 20, 30)
    with pytest.raises(ValueError, match="opacity"):
        composite(Image.new("L", (16, 16)), old, opacity=1.5)


def test_it_imports_without_torch():
    code = "import sys, ml.colormap; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_contrast_ratios_are_wcags():
    from ml.colormap import contrast_ratio

    assert contrast_ratio((0, 0, 0), (255, 255, 255)) == pytest.approx(21.0)
    assert contrast_ratio((118, 118, 118), (255, 255, 255)) == pytest.approx(4.54, abs=0.01)
    assert contrast_ratio((252, 0, 0), (128, 128, 128)) < 1.1  # red on mid-grey: hue only


def test_the_readme_states_the_contrast_table_this_code_computes():
    from pathlib import Path

    from ml.colormap import contrast_table

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert contrast_table() in readme

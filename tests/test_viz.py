"""Overlay colours and PNG encoding (the write stage of detect)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from vlm_ad import viz


def _interpolated(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The colormap computed per pixel (the rule the lookup table samples)."""
    return viz.interpolated_colors((values - lo) / (hi - lo))


def test_colorize_matches_the_interpolated_colormap_to_one_level():
    values = np.random.default_rng(0).uniform(-0.5, 2.5, (64, 80)).astype(np.float32)
    got = viz.colorize(values, 0.0, 2.0)
    assert got.shape == (64, 80, 3) and got.dtype == np.uint8
    assert np.abs(got.astype(int) - _interpolated(values, 0.0, 2.0)).max() <= 1
    assert (got[values <= 0] == viz._ANCHORS[0]).all()  # below the range: the first colour
    assert (got[values >= 2.0] == viz._ANCHORS[-1]).all()  # above it: the last


def test_colorize_survives_nan_and_a_flat_map():
    flat = np.full((8, 8), 3.0, np.float32)
    assert (viz.colorize(flat) == viz._ANCHORS[0]).all()  # no range: the first colour, no division by zero
    holes = np.array([[np.nan, 1.0]], np.float32)
    assert viz.colorize(holes, 0.0, 1.0)[0, 0].tolist() == viz._ANCHORS[0].tolist()


@pytest.mark.parametrize("opencv", [True, False], ids=["opencv", "numpy"])
def test_colorize_is_the_lookup_table_exactly_with_or_without_opencv(monkeypatch, opencv):
    """The packed-word lookup gives the table's colours: the same bytes as indexing the RGB table by level, with NaN
    and infinities clipped as before, whichever library drops the packing byte."""
    if opencv and viz._cv2() is None:
        pytest.skip("OpenCV is not installed (the export extra)")
    if not opencv:
        monkeypatch.setattr(viz, "_cv2", lambda: None)
    values = np.random.default_rng(3).uniform(-1, 3, (45, 71)).astype(np.float32)
    values[0, :4] = [np.nan, np.inf, -np.inf, 2.0]
    got = viz.colorize(values, 0.0, 2.0)
    level = np.nan_to_num(np.clip(values * ((viz._LUT_SIZE - 1) / 2.0), 0, viz._LUT_SIZE - 1), nan=0.0)
    assert got.flags.c_contiguous and got.shape == (45, 71, 3)
    assert (got == viz._lut()[level.astype(np.int32)]).all()
    assert got[0, 0].tolist() == got[0, 2].tolist() == viz._ANCHORS[0].tolist()
    assert got[0, 1].tolist() == got[0, 3].tolist() == viz._lut()[-1].tolist()


def test_overlay_is_the_mean_of_image_and_colours():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    amap = rng.random((20, 30)).astype(np.float32)
    heat = viz.colorize(amap, 0.0, 1.0).astype(int)
    got = viz.overlay(image, amap, vmin=0.0, vmax=1.0).astype(int)
    assert np.abs(got - (image.astype(int) + heat) / 2).max() <= 0.5
    faint = viz.overlay(image, amap, vmin=0.0, vmax=1.0, alpha=0.25).astype(int)
    assert np.abs(faint - (0.75 * image + 0.25 * heat)).max() <= 1


@pytest.mark.parametrize("opencv", [True, False], ids=["opencv", "pillow"])
@pytest.mark.parametrize("shape", [(37, 53, 3), (37, 53)])
def test_png_bytes_is_lossless_with_either_encoder(monkeypatch, opencv, shape):
    if opencv and viz._cv2() is None:
        pytest.skip("OpenCV is not installed (the export extra)")
    if not opencv:
        monkeypatch.setattr(viz, "_cv2", lambda: None)
    image = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(viz.png_bytes(image))))
    assert decoded.shape == image.shape and (decoded == image).all()  # RGB order kept (no BGR swap left over)

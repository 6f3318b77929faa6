"""deflect-predict / predict_geotiff on a generated 4-band GeoTIFF (RGB + NIR, 300 x 400 px)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import rasterio
import torch
from rasterio.crs import CRS
from rasterio.transform import from_origin

import deflect_min as dm
from deflect_min.predict import NODATA_CLASS, main, predict_geotiff

BANDS = ["S2_B02", "S2_B03", "S2_B04", "S2_B08"]
GFM = "dinov2_vits14_imgfocus"  # built untrained: a real architecture, nothing downloaded
WINDOW = 28


def _write_scene(path, height, width):
    """uint16 reflectance x 10^4, UTM 33N, 10 m pixels, band names as descriptions, a nodata
    corner (0 in every band)."""
    rng = np.random.default_rng(0)
    data = rng.integers(200, 4000, size=(4, height, width), dtype=np.uint16)
    data[:, :20, :30] = 0
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=4,
                       dtype="uint16", crs=CRS.from_epsg(32633),
                       transform=from_origin(500000, 4600000, 10, 10), nodata=0) as dst:
        dst.write(data)
        dst.descriptions = tuple(BANDS)
    return path


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return _write_scene(tmp_path_factory.mktemp("scene") / "scene.tif", 300, 400)


def _adapter(tmp_path, task, num_classes=3):
    torch.manual_seed(0)
    base = dm.load_gfm(GFM, weights=None, img_size=WINDOW)
    model = dm.build_model(task, base, "deflect", bands=BANDS, num_classes=num_classes,
                           layers=[0])
    folder = tmp_path / task
    dm.save_adapter(model, folder, base=dict(backbone=GFM, weights=None, img_size=WINDOW, seed=0))
    return folder


def test_segmentation_map_keeps_crs_transform_and_nodata(scene, tmp_path):
    folder = _adapter(tmp_path, "segmentation")
    assert main(["--run", str(folder), "--input", str(scene), "--out", str(tmp_path / "a.tif"),
                 "--scale", "1e-4", "--batch-size", "16", "--stride", str(WINDOW)]) == 0
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "a.tif") as out:
        assert (out.crs, out.transform, out.shape, out.count) == (src.crs, src.transform,
                                                                  src.shape, 1)
        labels = out.read(1)
        assert out.nodata == NODATA_CLASS and out.dtypes[0] == "uint8"
    assert (labels[:20, :30] == NODATA_CLASS).all()
    assert set(np.unique(labels[20:])) <= {0, 1, 2}


def test_batched_and_one_at_a_time_give_the_same_map(scene, tmp_path):
    model = dm.load_adapter(None, _adapter(tmp_path, "segmentation"))
    # windows side by side (overlapping ones: tests/test_datasets.py, on sliding_window_logits)
    for batch, name in ((1, "one.tif"), (32, "many.tif")):
        predict_geotiff(model, scene, tmp_path / name, scale=1e-4, stride=WINDOW,
                        batch_size=batch, progress=False)
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "many.tif") as b:
        assert np.array_equal(a.read(), b.read())


def test_classification_scores_one_pixel_per_tile(scene, tmp_path):
    model = dm.load_adapter(None, _adapter(tmp_path, "classification", num_classes=5))
    out = predict_geotiff(model, scene, tmp_path / "scores.tif", scale=1e-4, progress=False)
    with rasterio.open(scene) as src, rasterio.open(out) as dst:
        assert dst.count == 5 and dst.shape == (-(-300 // WINDOW), -(-400 // WINDOW))
        assert dst.crs == src.crs and dst.transform.a == src.transform.a * WINDOW
        assert dst.transform.c == src.transform.c and dst.transform.f == src.transform.f
        np.testing.assert_allclose(dst.read().sum(0), 1.0, rtol=1e-5)


def test_user_errors_are_one_line_with_exit_status_2(scene, tmp_path):
    folder = _adapter(tmp_path, "segmentation")
    cmd = [sys.executable, "-m", "deflect_min.predict", "--run", str(folder), "--input",
           str(scene), "--out", str(tmp_path / "x.tif")]
    bad = subprocess.run(cmd + ["--bands", "B02,B03,B04,B08"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "the model needs the bands" in bad.stderr and "without ['S2_B02'" in bad.stderr
    assert main(["--run", str(folder), "--input", str(tmp_path / "nope.tif"),
                 "--out", str(tmp_path / "x.tif")]) == 2

"""CLAM/TRIDENT-style HDF5 export of tile stores (coords, attrs, optional features)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from PIL import Image

from slidemil.export import export_h5
from slidemil.failures import write_failed_store
from slidemil.slide import open_slide, rgba_to_rgb
from slidemil.store import open_tiles, write_features
from slidemil.tiling import TileParams, tile_slide
from slidemil.tissue import TissueParams, mask_slide


@pytest.fixture(scope="module")
def stores(small_slide, tmp_path_factory):
    """Tile stores of the small demo slide at 1.0 mpp (a pyramid level) and 0.75 mpp (between levels)."""
    slide, _ = small_slide
    d = tmp_path_factory.mktemp("export")
    mask_slide(slide, d / "m.png", d / "qc.png", TissueParams())
    out = {}
    for mpp in (1.0, 0.75):
        out[mpp] = d / f"t{mpp}.zarr"
        tile_slide(slide, d / "m.png", out[mpp], TileParams(target_mpp=mpp, tile_size=32), "s", progress=False)
    return slide, out


def test_coords_and_attrs_trace_every_tile_back(stores, tmp_path):
    slide, paths = stores
    g = open_tiles(paths[1.0])
    n = export_h5(paths[1.0], tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r") as h:
        coords, a = h["coords"][:], dict(h["coords"].attrs)
        assert "features" not in h
        np.testing.assert_array_equal(h["grid"][:], g["grid"][:])
    assert n == len(coords) > 20 and coords.dtype == np.int64 and coords.shape == (n, 2)
    np.testing.assert_array_equal(coords, g["coords"][:])
    assert a["patch_size"] == 32 and a["patch_level"] == g.attrs["level"] == 1
    assert a["patch_size_level0"] == 64 and a["patch_size_at_level"] == 32
    assert a["level0_width"] == 1536 and a["level0_height"] == 1024
    assert a["target_mpp"] == 1.0 and a["slide_mpp"] == pytest.approx(0.5)
    np.testing.assert_allclose(a["downsample"], [2.0, 2.0])
    np.testing.assert_array_equal(a["level_dim"], [768, 512])
    assert a["name"] == "s" and a["status"] == "ok" and a["overlap"] == 0
    # CLAM reads patch_size px at patch_level; TRIDENT patch_size_level0 px at level 0, resized:
    # both give back the stored tile (up to JPEG)
    s = open_slide(slide)
    for i in (0, n // 2, n - 1):
        x, y = (int(v) for v in coords[i])
        clam = np.asarray(rgba_to_rgb(s.read_region((x, y), int(a["patch_level"]), (32, 32))), float)
        trident = rgba_to_rgb(s.read_region((x, y), 0, (64, 64))).resize((32, 32), Image.Resampling.BOX)
        tile = g["tiles"][i].astype(float)
        assert np.abs(clam - tile).mean() < 12
        assert np.abs(np.asarray(trident, float) - tile).mean() < 12


def test_between_levels_patch_size_at_level_differs(stores, tmp_path):
    _, paths = stores
    export_h5(paths[0.75], tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r") as h:
        a = dict(h["coords"].attrs)
    assert a["patch_size"] == 32 and a["patch_level"] == 0
    assert a["patch_size_level0"] == a["patch_size_at_level"] == 48 and a["resize_scale"] != 1.0


def test_features_are_included_and_must_match_the_tiles(stores, tmp_path):
    _, paths = stores
    g = open_tiles(paths[1.0])
    n = g["coords"].shape[0]
    feats = np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)
    write_features(tmp_path / "f.zarr", feats, g["coords"][:], g["grid"][:], {"encoder": "enc"})
    export_h5(paths[1.0], tmp_path / "s.h5", tmp_path / "f.zarr")
    with h5py.File(tmp_path / "s.h5", "r") as h:
        assert h["features"].shape == (n, 8) and h["features"].dtype == np.float32
        np.testing.assert_allclose(h["features"][:], feats.astype(np.float16), rtol=1e-3)
        assert h["features"].attrs["encoder"] == "enc"
    write_features(tmp_path / "bad.zarr", feats[:-1], g["coords"][:-1], g["grid"][:-1], {})
    with pytest.raises(ValueError, match="coords differ"):
        export_h5(paths[1.0], tmp_path / "x.h5", tmp_path / "bad.zarr")
    assert not (tmp_path / "x.h5").exists() and not list(tmp_path.glob(".x.h5.tmp-*"))


def test_failed_store_exports_zero_coords_with_its_status(tmp_path):
    write_failed_store(tmp_path / "t.zarr", "bad", "bad.svs: file is empty", 32)
    assert export_h5(tmp_path / "t.zarr", tmp_path / "bad.h5") == 0
    with h5py.File(tmp_path / "bad.h5", "r") as h:
        assert h["coords"].shape == (0, 2) and h["coords"].dtype == np.int64
        assert h["coords"].attrs["status"] == "failed" and "file is empty" in h["coords"].attrs["reason"]
        assert h["coords"].attrs["patch_size"] == 32

import numpy as np
import pytest
import zarr

from conftest import shared_slide
from slidemil import tiling
from slidemil.slide import open_slide, rgba_to_rgb
from slidemil.tiling import TileParams, select_tiles, tile_fractions, tile_slide
from slidemil.tissue import TissueParams, mask_slide


def test_tile_fractions_counts_mask_per_cell():
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True  # left half tissue
    frac = tile_fractions(mask, mask_downsample=16.0, step0=64.0, n_cols=2, n_rows=2)
    np.testing.assert_allclose(frac, [[1, 0], [1, 0]])
    # cells smaller than a mask pixel take the mask value at their centre
    frac = tile_fractions(mask, mask_downsample=16.0, step0=8.0, n_cols=16, n_rows=16)
    assert frac[:, :8].all() and not frac[:, 8:].any()


def test_one_global_grid_and_whole_tiles_only():
    mask = np.ones((10, 10), bool)
    grid, coords = select_tiles((1000, 700), step0=96.0, mask=mask, mask_downsample=100.0, min_tissue=0.5)
    assert len(grid) == (1000 // 96) * (700 // 96)
    np.testing.assert_array_equal(coords, np.round(grid * 96.0))
    assert (coords + 96 <= [1000, 700]).all()


def _masked(slide, tmp_path):
    mask_slide(slide, tmp_path / "m.png", tmp_path / "qc.png", TissueParams())
    return tmp_path / "m.png"


@pytest.mark.parametrize("target_mpp", [1.0, 0.75])  # a pyramid level, and between levels
def test_tiles_match_the_slide_at_target_mpp(small_slide, tmp_path, target_mpp):
    slide, _ = small_slide
    params = TileParams(target_mpp=target_mpp, tile_size=32)
    attrs = tile_slide(slide, _masked(slide, tmp_path), tmp_path / "t.zarr", params, "s", progress=False)
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    n = attrs["n_tiles"]
    assert n > 20 and g["tiles"].shape == (n, 32, 32, 3) and g["coords"].shape == (n, 2)
    assert attrs["level"] == (1 if target_mpp == 1.0 else 0)
    assert attrs["tile_size_level0"] == pytest.approx(32 * target_mpp / 0.5)
    # a tile equals the slide region it claims to come from (up to JPEG and resampling)
    from PIL import Image

    s = open_slide(slide)
    side = round(attrs["tile_size_level0"])
    for i in (0, n // 2, n - 1):
        x, y = g["coords"][i]
        ref = rgba_to_rgb(s.read_region((int(x), int(y)), 0, (side, side))).resize((32, 32), Image.Resampling.BOX)
        assert np.abs(np.asarray(ref, float) - g["tiles"][i].astype(float)).mean() < 12
    assert g["tiles"][:].mean() < 235  # tissue, not glass
    for key in ("slide_mpp", "target_mpp", "tile_size", "stride", "level", "level_downsample",
                "source_size", "source_mtime", "slidemil_version"):
        assert key in g.attrs


def test_blank_slide_gives_empty_valid_store(tmp_path):
    from slidemil.demo import write_pyramidal_tiff

    blank = np.full((1024, 1024, 3), 244, np.uint8)
    write_pyramidal_tiff(blank, tmp_path / "blank.tiff", 0.5)
    attrs = tile_slide(tmp_path / "blank.tiff", _masked(tmp_path / "blank.tiff", tmp_path), tmp_path / "t.zarr",
                       TileParams(), "blank", progress=False)
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    assert attrs["status"] == "empty" and g["tiles"].shape[0] == 0 and g["coords"].shape == (0, 2)


def test_interrupted_write_leaves_no_store_and_rerun_completes(small_slide, tmp_path, monkeypatch):
    slide, _ = small_slide
    mask = _masked(slide, tmp_path)
    real = tiling.read_tiles

    def dying(*a, **k):
        for j, item in enumerate(real(*a, **k)):
            if j == 10:
                raise KeyboardInterrupt  # as if the job were killed
            yield item

    monkeypatch.setattr(tiling, "read_tiles", dying)
    with pytest.raises(KeyboardInterrupt):
        tile_slide(slide, mask, tmp_path / "t.zarr", TileParams(), "s", progress=False)
    assert not (tmp_path / "t.zarr").exists() and not list(tmp_path.glob("t.zarr.tmp-*"))
    monkeypatch.setattr(tiling, "read_tiles", real)
    tile_slide(slide, mask, tmp_path / "t.zarr", TileParams(), "s", progress=False)
    tile_slide(slide, mask, tmp_path / "u.zarr", TileParams(), "s", progress=False)
    a, b = (zarr.open_group(str(tmp_path / n), mode="r") for n in ("t.zarr", "u.zarr"))
    np.testing.assert_array_equal(a["tiles"][:], b["tiles"][:])


@pytest.mark.parametrize("target_mpp", [0.5, 1.0])
def test_real_svs_tiles_inside_slide(tmp_path, target_mpp):
    path = shared_slide("CMU-1-Small-Region.svs")
    attrs = tile_slide(path, _masked(path, tmp_path), tmp_path / "t.zarr",
                       TileParams(target_mpp=target_mpp, tile_size=112), "cmu", progress=False)
    g = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")
    coords = g["coords"][:]
    assert attrs["n_tiles"] > 5
    assert (coords >= 0).all() and (coords + attrs["tile_size_level0"] <= [2220 + 1, 2967 + 1]).all()
    assert g["tiles"][:].reshape(len(coords), -1, 3).mean(axis=1).min(axis=1).mean() < 225


def test_real_svs_without_mpp_uses_sheet_value(tmp_path):
    path = shared_slide("tcga-cr-7395-01a-01-ts1.svs")
    mask_slide(path, tmp_path / "m.png", tmp_path / "qc.png", TissueParams(), mpp_override=0.25)
    attrs = tile_slide(path, tmp_path / "m.png", tmp_path / "t.zarr", TileParams(target_mpp=1.0, tile_size=64),
                       "tcga", mpp_override=0.25, progress=False)
    assert attrs["n_tiles"] > 50 and attrs["slide_mpp"] == 0.25 and attrs["level"] == 1

import numpy as np
import pytest
import zarr

from conftest import shared_slide
from slidemil.slides import tiling
from slidemil.slides.slide import open_slide, rgba_to_rgb
from slidemil.slides.tiling import TileParams, select_tiles, tile_fractions, tile_slide
from slidemil.slides.tissue import TissueParams, mask_slide


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
    from slidemil.cohorts.demo import write_pyramidal_tiff

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
    assert not (tmp_path / "t.zarr").exists() and not list(tmp_path.glob(".t.zarr.tmp-*"))
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


# --- the fast read path (direct JPEG tiles), shard writer, threads ----------------------------

def _tiles(path):
    g = zarr.open_group(str(path), mode="r")
    return g["tiles"][:], g["coords"][:], dict(g.attrs)


def _via_openslide(monkeypatch):
    monkeypatch.setattr(tiling, "open_tiled_jpeg_level", lambda *a, **k: None)


@pytest.mark.parametrize("target_mpp,tile_size", [(1.0, 64), (0.75, 48), (0.5, 40)])
def test_direct_jpeg_path_matches_openslide_path(small_slide, tmp_path, monkeypatch, target_mpp, tile_size):
    slide, _ = small_slide
    mask = _masked(slide, tmp_path)
    params = TileParams(target_mpp=target_mpp, tile_size=tile_size)
    fast = tile_slide(slide, mask, tmp_path / "fast.zarr", params, "s", progress=False)
    with monkeypatch.context() as m:
        _via_openslide(m)
        slow = tile_slide(slide, mask, tmp_path / "slow.zarr", params, "s", progress=False)
    assert (fast["reader"], slow["reader"]) == ("tiff-jpeg", "openslide")
    a, ca, _ = _tiles(tmp_path / "fast.zarr")
    b, cb, _ = _tiles(tmp_path / "slow.zarr")
    np.testing.assert_array_equal(ca, cb)  # same grid, same tiles selected
    assert np.abs(a.astype(float) - b.astype(float)).mean() < 1.0  # same pixels up to JPEG re-encoding


def test_power_of_two_between_levels_decodes_at_reduced_scale(small_slide, tmp_path):
    """1.0 mpp from a 0.5 mpp level with no 1.0 level: libjpeg's 1/2-scale decode, no resampling."""
    from PIL import Image

    from slidemil.slides.jpeg_tiles import open_tiled_jpeg_level
    from slidemil.slides.slide import plan_read

    slide, _ = small_slide
    s = open_slide(slide)
    plan = plan_read([1.0], 0.5, 1.0)  # as if the slide had level 0 only
    lv = open_tiled_jpeg_level(slide, s, 0)
    grid, coords = select_tiles(s.dimensions, 64.0, np.ones((8, 12), bool), 128.0, 0.5)
    assert tiling.read_geometry(lv, plan) == (2, 1.0, True)
    got = dict(tiling.read_tiles(lv, plan, grid, coords, 32, 8))
    for i in (0, len(grid) // 2, len(grid) - 1):
        x, y = (int(v) for v in coords[i])
        ref = rgba_to_rgb(s.read_region((x, y), 0, (64, 64))).resize((32, 32), Image.Resampling.BOX)
        assert got[i].shape == (32, 32, 3)
        assert np.abs(np.asarray(ref, float) - got[i]).mean() < 6


def test_tile_equal_to_a_source_tile_is_copied_not_reencoded(small_slide, tmp_path):
    """256 px tiles at the scan's own mpp are the TIFF's JPEG tiles: stored as they are."""
    import imagecodecs

    slide, _ = small_slide
    mask = _masked(slide, tmp_path)
    attrs = tile_slide(slide, mask, tmp_path / "t.zarr", TileParams(target_mpp=0.5, tile_size=256, min_tissue=0.3),
                       "s", progress=False)
    tiles, coords, _ = _tiles(tmp_path / "t.zarr")
    assert attrs["n_tiles"] > 0 and attrs["tiles_copied"] == attrs["n_tiles"]
    s = open_slide(slide)
    for i in range(len(coords)):  # the stored JPEG decodes to exactly what OpenSlide reads there
        x, y = (int(v) for v in coords[i])
        np.testing.assert_array_equal(tiles[i], np.asarray(rgba_to_rgb(s.read_region((x, y), 0, (256, 256)))))
    re = tile_slide(slide, mask, tmp_path / "r.zarr", TileParams(target_mpp=0.5, tile_size=256, min_tissue=0.3,
                                                                  copy_jpeg=False), "s", progress=False)
    assert re["tiles_copied"] == 0
    assert np.abs(_tiles(tmp_path / "r.zarr")[0].astype(float) - tiles).mean() < 2
    assert isinstance(imagecodecs.jpeg_decode(_first_shard_chunk(tmp_path / "t.zarr")), np.ndarray)


def _first_shard_chunk(store):
    """The first chunk's bytes in shard 0, found through the shard index (a standalone JPEG)."""
    data = (store / "tiles" / "c" / "0" / "0" / "0" / "0").read_bytes()
    n = zarr.open_group(str(store), mode="r")["tiles"].metadata.chunk_grid.chunk_shape[0]
    index = np.frombuffer(data[-(16 * n + 4) : -4], "<u8").reshape(n, 2)
    return data[index[0, 0] : index[0, 0] + index[0, 1]]


def test_threads_give_the_same_store(small_slide, tmp_path):
    slide, _ = small_slide
    mask = _masked(slide, tmp_path)
    params = TileParams(target_mpp=0.75, tile_size=24, shard_tiles=16)
    one = tile_slide(slide, mask, tmp_path / "1.zarr", params, "s", progress=False, threads=1)
    two = tile_slide(slide, mask, tmp_path / "2.zarr", params, "s", progress=False, threads=2)
    assert one == two and one["n_tiles"] > 4 * 16
    files = lambda p: {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}  # noqa: E731
    assert files(tmp_path / "1.zarr") == files(tmp_path / "2.zarr")


def test_shard_writer_writes_what_zarr_writes(tmp_path):
    """write_tile_shard's files are byte-identical to zarr's own sharded write of the same tiles."""
    import imagecodecs

    from slidemil.slides.store import create_tile_arrays, write_tile_shard

    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 200, (21, 16, 16, 3), dtype=np.uint8)  # 2 full shards of 8 and a partial one
    ga = zarr.open_group(str(tmp_path / "a.zarr"), mode="w", zarr_format=3)
    gb = zarr.open_group(str(tmp_path / "b.zarr"), mode="w", zarr_format=3)
    a = create_tile_arrays(ga, len(tiles), 16, 8, 90)
    b = create_tile_arrays(gb, len(tiles), 16, 8, 90)
    a[:] = tiles
    for k in range(3):
        write_tile_shard(b, k, [imagecodecs.jpeg_encode(t, level=90) for t in tiles[8 * k : 8 * k + 8]])
    files = lambda p: {str(f.relative_to(p)): f.read_bytes() for f in sorted(p.rglob("*")) if f.is_file()}  # noqa: E731
    assert files(tmp_path / "a.zarr") == files(tmp_path / "b.zarr")
    np.testing.assert_array_equal(a[:], b[:])
    with pytest.raises(ValueError):
        write_tile_shard(b, 2, [b""] * 6)  # past the end of the array


def test_decoded_source_tiles_are_evicted_as_the_pass_moves_down(small_slide, tmp_path, monkeypatch):
    """Memory is about a row of source tiles, not the slide: the decode cache never holds much more."""
    from slidemil.slides.jpeg_tiles import open_tiled_jpeg_level
    from slidemil.slides.slide import plan_read

    slide, _ = small_slide
    s = open_slide(slide)
    lv = open_tiled_jpeg_level(slide, s, 0)
    plan = plan_read(s.level_downsamples, 0.5, 0.5)
    grid, coords = select_tiles(s.dimensions, 24.0, np.ones((8, 12), bool), 128.0, 0.5)  # every cell
    peak = 0
    real_get = tiling._Regions.get

    def get(self, *a):
        nonlocal peak
        peak = max(peak, len(self.cache))
        return real_get(self, *a)

    monkeypatch.setattr(tiling._Regions, "get", get)
    n = sum(1 for _ in tiling.read_tiles(lv, plan, grid, coords, 24, 16))
    assert n == len(grid) and lv.n_cols * lv.n_rows == 24
    assert peak <= 2 * lv.n_cols  # the row being cut and the row below it at most


def test_corrupt_jpeg_tile_is_a_one_line_slide_error(small_slide, tmp_path):
    import shutil

    from slidemil.slides.errors import SlideError
    from slidemil.slides.jpeg_tiles import open_tiled_jpeg_level

    slide, _ = small_slide
    bad = tmp_path / "bad.tiff"
    shutil.copy(slide, bad)
    lv = open_tiled_jpeg_level(bad, open_slide(bad), 0)
    off, n = int(lv.offsets[1, 2]), int(lv.counts[1, 2])
    with open(bad, "r+b") as f:  # garbage over the middle of one tile's entropy-coded data
        f.seek(off + 20)
        f.write(b"\xff\x00\xff\xd9" * ((n - 40) // 4))
    mask = _masked(slide, tmp_path)
    with pytest.raises(SlideError) as e:
        tile_slide(bad, mask, tmp_path / "t.zarr", TileParams(target_mpp=0.5, tile_size=64, min_tissue=0.0),
                   "bad", progress=False)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "t.zarr").exists()


def test_vendor_formats_fall_back_to_openslide(tmp_path):
    """JPEG 2000 SVS and DICOM are read through OpenSlide."""
    path = shared_slide("tcga-cr-7395-01a-01-ts1.svs")
    mask_slide(path, tmp_path / "m.png", tmp_path / "qc.png", TissueParams(), mpp_override=0.25)
    attrs = tile_slide(path, tmp_path / "m.png", tmp_path / "t.zarr", TileParams(target_mpp=2.0, tile_size=32),
                       "tcga", mpp_override=0.25, progress=False)
    assert attrs["reader"] == "openslide" and attrs["n_tiles"] > 50
    dcm = shared_slide("multiframe_camelyon_challenge_image.dcm")
    mask_slide(dcm, tmp_path / "d.png", tmp_path / "dqc.png", TissueParams())
    attrs = tile_slide(dcm, tmp_path / "d.png", tmp_path / "d.zarr", TileParams(target_mpp=58.0, tile_size=16,
                                                                               min_tissue=0.2), "dcm", progress=False)
    assert attrs["reader"] == "openslide" and attrs["n_tiles"] > 5 and attrs["level"] == 0
    tiles, _, _ = _tiles(tmp_path / "d.zarr")
    assert tiles.mean() < 235


def test_aperio_rgb_coded_tiles_are_copied_and_scaled_right(tmp_path):
    """Aperio's RGB-coded JPEG tiles (photometric RGB, no JFIF) made standalone keep their colours."""
    from PIL import Image

    path = shared_slide("CMU-1-Small-Region.svs")
    mask_slide(path, tmp_path / "m.png", tmp_path / "qc.png", TissueParams())
    from slidemil.slides.slide import slide_mpp

    mpp = slide_mpp(open_slide(path), path)  # 0.499: 240 px tiles at exactly the scan's mpp are its tiles
    attrs = tile_slide(path, tmp_path / "m.png", tmp_path / "t.zarr",
                       TileParams(target_mpp=mpp, tile_size=240, min_tissue=0.3), "cmu", progress=False)
    tiles, coords, _ = _tiles(tmp_path / "t.zarr")
    assert attrs["reader"] == "tiff-jpeg" and attrs["n_tiles"] > 10 and attrs["tiles_copied"] == attrs["n_tiles"]
    s = open_slide(path)
    for i in (0, len(coords) // 2, len(coords) - 1):
        x, y = (int(v) for v in coords[i])
        np.testing.assert_array_equal(tiles[i], np.asarray(rgba_to_rgb(s.read_region((x, y), 0, (240, 240)))))
    attrs = tile_slide(path, tmp_path / "m.png", tmp_path / "h.zarr", TileParams(target_mpp=1.0, tile_size=112),
                       "cmu", progress=False)
    tiles, coords, _ = _tiles(tmp_path / "h.zarr")
    assert attrs["decode_denom"] == 2 and attrs["resample_scale"] == 1.0
    ref = [rgba_to_rgb(s.read_region((int(x), int(y)), 0, (224, 224))).resize((112, 112), Image.Resampling.BOX)
           for x, y in coords]
    assert np.abs(np.stack(ref).astype(float) - tiles).mean() < 15  # misread colours would be ~50


@pytest.mark.parametrize("name", ["small", "CMU-1-Small-Region.svs"])
def test_decoders_agree_with_and_without_simplejpeg(small_slide, monkeypatch, name):
    """simplejpeg is optional: imagecodecs (full scale) and Pillow's draft mode (DCT scaling) decode
    the same pixels without it."""
    import slidemil.slides.jpeg_tiles as jpeg_tiles
    from slidemil.slides.jpeg_tiles import open_tiled_jpeg_level

    path = small_slide[0] if name == "small" else shared_slide(name)
    lv = open_tiled_jpeg_level(path, open_slide(path), 0)
    with_sj = {d: lv.decode(1, 1, d) for d in (1, 2, 4)}
    monkeypatch.setattr(jpeg_tiles, "_simplejpeg", None)
    for d, want in with_sj.items():
        np.testing.assert_array_equal(lv.decode(1, 1, d), want)


@pytest.mark.parametrize("damage", ["zeroed", "cut"])
def test_corrupt_jpeg_tiles_are_an_error_not_garbage(small_slide, tmp_path, damage):
    """Tiles copied without decoding (target = a level, tile = source tile) are checked too."""
    import tifffile

    from slidemil.slides.errors import SlideError

    slide, _ = small_slide
    bad = tmp_path / "bad.tiff"
    data = bytearray(slide.read_bytes())
    with tifffile.TiffFile(slide) as tf:
        page = tf.pages[0]
        offsets, counts = page.dataoffsets, page.databytecounts
    for off, n in zip(offsets, counts):
        if damage == "zeroed":
            data[off : off + n] = bytes(n)
        else:
            data[off + n // 2 : off + n] = bytes(n - n // 2)
    bad.write_bytes(bytes(data))
    mask = _masked(slide, tmp_path)
    with pytest.raises(SlideError, match="bad.tiff.*corrupt"):
        tile_slide(bad, mask, tmp_path / "t.zarr", TileParams(target_mpp=0.5, tile_size=256, min_tissue=0.1),
                   "bad", progress=False)
    assert not (tmp_path / "t.zarr").exists()

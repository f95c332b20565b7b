import re

import numpy as np
import pytest

from conftest import shared_slide
from slidemil.slides.errors import SlideError
from slidemil.slides.slide import open_slide, plan_read, slide_mpp
from slidemil.slides.tiff_damage import tiff_damage
from slidemil.slides.vips import VipsSlide


def test_plan_read_picks_level_by_mpp_not_index():
    # 0.25 mpp scan with levels 1, 4, 16: 1.0 mpp is level 1 as-is; 0.5 mpp reads level 0 and halves it
    p = plan_read([1.0, 4.0, 16.0], 0.25, 1.0)
    assert (p.level, p.scale) == (1, 1.0)
    p = plan_read([1.0, 4.0, 16.0], 0.25, 0.5)
    assert p.level == 0 and p.scale == pytest.approx(0.5)
    # a scan's 0.2528 mpp is read as 0.25 without resampling
    assert plan_read([1.0, 2.0], 0.2528, 0.5).scale == 1.0


def test_finer_than_scan_is_an_error_unless_allowed():
    with pytest.raises(SlideError, match="finer than the scan"):
        plan_read([1.0], 28.97, 0.5, "x.dcm")
    assert plan_read([1.0], 28.97, 0.5, allow_upsample=True).scale > 1


def test_missing_mpp_needs_override():
    path = shared_slide("tcga-cr-7395-01a-01-ts1.svs")
    s = open_slide(path)
    with pytest.raises(SlideError, match="tcga-cr-7395.*mpp.*samples.tsv"):
        slide_mpp(s, path)
    assert slide_mpp(s, path, 0.25) == 0.25


def test_mpp_from_metadata_wins():
    path = shared_slide("CMU-1-Small-Region.svs")
    assert slide_mpp(open_slide(path), path, 0.25) == pytest.approx(0.499)


@pytest.mark.parametrize("maker", ["missing", "empty", "text", "truncated", "malformed_dicom"])
def test_bad_files_give_one_line_error_naming_the_file(tmp_path, maker):
    path = tmp_path / f"{maker}.svs"
    if maker == "empty":
        path.write_bytes(b"")
    elif maker == "text":
        path.write_text("slide_id\tpath\nthis is not a slide\n")
    elif maker == "truncated":
        path.write_bytes(shared_slide("CMU-1-Small-Region.svs").read_bytes()[:5000])
    elif maker == "malformed_dicom":
        path = shared_slide("malformed_dicom_TCGA-XK-AAJU.dcm")
    with pytest.raises(SlideError) as e:
        open_slide(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg


def test_thumbnail_of_a_slide_without_pyramid_is_read_in_bands(small_slide):
    """Banded reading gives the same picture as one read (and bounds memory on flat slides)."""
    import numpy as np

    from slidemil.slides.slide import read_thumbnail

    s = open_slide(small_slide[0])
    one, ds1 = read_thumbnail(s, 300)
    banded, ds2 = read_thumbnail(s, 300, band_pixels=20_000)
    assert one.shape == banded.shape and ds1 == ds2
    assert np.abs(one.astype(int) - banded.astype(int)).mean() < 3


def test_ome_tiff_opens_with_mpp(tmp_path):
    """OME-TIFF (SubIFD pyramid) reads through OpenSlide's generic TIFF driver: level 0 + mpp."""
    import numpy as np
    import tifffile

    rgb = np.full((512, 768, 3), 230, np.uint8)
    path = tmp_path / "x.ome.tif"
    with tifffile.TiffWriter(path) as tw:
        tw.write(rgb, tile=(256, 256), compression="jpeg", photometric="rgb", subifds=1,
                 resolution=(2e4, 2e4), resolutionunit="CENTIMETER", metadata={"axes": "YXS"})
        tw.write(rgb[::2, ::2], tile=(256, 256), compression="jpeg", photometric="rgb", subfiletype=1)
    s = open_slide(path)
    assert s.dimensions == (768, 512) and slide_mpp(s, path) == pytest.approx(0.5)


@pytest.mark.parametrize("keep", [5000, 0.5, 0.7, 0.99])
@pytest.mark.parametrize("suffix", [".svs", ".tif"])
def test_truncated_svs_is_reported_as_truncated_svs(tmp_path, keep, suffix):
    """A cut-short Aperio SVS (header readable, body gone) says so, and what to do, not "convert it".

    Cut before its first image directory only the name tells it is an SVS; cut later, the Aperio
    description of the first directory does (even under another name).
    """
    src = shared_slide("CMU-1-Small-Region.svs").read_bytes()
    n = keep if isinstance(keep, int) else int(len(src) * keep)
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(src[:n])
    with pytest.raises(SlideError) as e:
        open_slide(path)
    msg = str(e.value)
    kind = "Aperio SVS" if suffix == ".svs" or n > 1_280_000 else "TIFF"  # first directory ends ~1.28 MB in
    assert msg.startswith(f"{path}: truncated or damaged {kind}: ") and "\n" not in msg
    assert re.search(rf"beyond the end of the file \({n} bytes\); re-copy the file or remove it from samples.tsv$", msg)
    assert "not a slide format" not in msg and "convert" not in msg


def test_tiff_whose_tiles_are_cut_off_is_truncated(tmp_path, small_slide):
    """Directories intact but strips/tiles past the end (a TIFF written directory-first, then cut)."""
    import tifffile

    rgb = np.full((512, 512, 3), 200, np.uint8)
    path = tmp_path / "x.tif"
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb")
    with tifffile.TiffFile(path) as tf:
        first_tile = int(tf.pages[0].dataoffsets[0])
    data = path.read_bytes()
    path.write_bytes(data[: first_tile + 1000])
    assert tiff_damage(path) == ("TIFF", f"4 of the 4 strips or tiles of image 0 lie beyond the end of the file "
                                         f"(they reach byte {len(data)}, the file has {first_tile + 1000})")
    assert tiff_damage(small_slide[0]) is None and tiff_damage(shared_slide("CMU-1-Small-Region.svs")) is None


def _plain_tiff(path, rgb, **res):
    """A striped (untiled, no pyramid) LZW TIFF, as microscope software exports them; res: xres/yres px/mm."""
    import pyvips

    pyvips.Image.new_from_array(rgb).copy(interpretation="srgb").tiffsave(str(path), compression="lzw", **res)
    return path


def test_plain_striped_tiff_opens_with_libvips_and_reads_like_openslide(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    path = _plain_tiff(tmp_path / "plain.tif", rgb, xres=4000.0, yres=4000.0, resunit="cm")  # 0.25 um/px
    s = open_slide(path)
    assert isinstance(s, VipsSlide) and s.dimensions == (400, 300) and s.level_downsamples == (1.0,)
    assert slide_mpp(s, path) == pytest.approx(0.25)
    region = s.read_region((380, -10), 0, (40, 30))  # OpenSlide's contract: RGBA, transparent outside
    assert region.mode == "RGBA" and region.size == (40, 30)
    a = np.asarray(region)
    np.testing.assert_array_equal(a[10:, :20, :3], rgb[:20, 380:])
    assert (a[10:, :20, 3] == 255).all() and (a[:10, :, 3] == 0).all() and (a[:, 20:, 3] == 0).all()
    from slidemil.slides.slide import read_thumbnail

    thumb, ds = read_thumbnail(s, 100)
    assert thumb.shape == (75, 100, 3) and ds == 4.0
    np.testing.assert_allclose(thumb.mean((0, 1)), rgb.mean((0, 1)), atol=2)
    assert s.get_thumbnail((50, 50)).size == (50, 38)


DPI72 = {"xres": 72 / 25.4, "yres": 72 / 25.4, "resunit": "inch"}  # an image tool's default


@pytest.mark.parametrize("res, why", [({}, "no resolution tags"), (DPI72, r"72 dpi \(352.8 um/px\)")])
def test_plain_tiff_without_a_scan_resolution_needs_the_sheet_mpp(tmp_path, res, why):
    path = _plain_tiff(tmp_path / "nores.tif", np.full((64, 64, 3), 200, np.uint8), **res)
    s = open_slide(path)
    want = rf"^{re.escape(str(path))}: no microns-per-pixel .*{why}.*`mpp` column of samples.tsv"
    with pytest.raises(SlideError, match=want):
        slide_mpp(s, path)
    assert slide_mpp(s, path, 0.5) == 0.5


def test_png_opens_too_and_unreadable_files_keep_the_clear_error(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((40, 60, 4), 128, np.uint8)).save(tmp_path / "x.png")  # RGBA: flattened on white
    s = open_slide(tmp_path / "x.png")
    assert isinstance(s, VipsSlide) and s.dimensions == (60, 40)
    assert np.asarray(s.read_region((0, 0), 0, (2, 2)))[0, 0, 3] == 255
    (tmp_path / "x.svs").write_text("slide_id\tpath\nthis is not a slide\n")
    with pytest.raises(SlideError, match=r"x.svs: not a slide format OpenSlide or libvips can read; convert it"):
        open_slide(tmp_path / "x.svs")

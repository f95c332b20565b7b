import pytest

from conftest import shared_slide
from slidemil.slide import SlideError, open_slide, plan_read, slide_mpp


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

    from slidemil.slide import read_thumbnail

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

import numpy as np
import pytest

from conftest import shared_slide
from slidemil.slide import open_slide, read_thumbnail
from slidemil.tissue import TissueParams, mask_slide, otsu_threshold, tissue_mask


def _pink_disc(size=200, hole_radius=0):
    """A pink tissue disc on glass, optionally with a central hole, at 8 um/px."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    tissue = (r < size * 0.4) & (r >= hole_radius)
    rgb = np.full((size, size, 3), 242, np.uint8)
    rgb[tissue] = (220, 140, 190)
    return rgb, tissue


def test_otsu_splits_two_modes():
    x = np.concatenate([np.full(100, 0.1), np.full(100, 0.6)])
    assert 0.09 <= otsu_threshold(x) < 0.6


def test_small_holes_filled_large_holes_kept_open():
    um = 8.0
    rgb, _ = _pink_disc(hole_radius=5)  # ~ 80 um across: a small hole
    assert tissue_mask(rgb, um)[100, 100]
    rgb, _ = _pink_disc(hole_radius=40)  # ~ 640 um across: a lumen, stays background
    assert not tissue_mask(rgb, um)[100, 100]


def test_blank_glass_gives_empty_mask():
    rgb = np.full((100, 100, 3), 243, np.uint8) + np.random.default_rng(0).integers(0, 4, (100, 100, 3), dtype=np.uint8)
    assert not tissue_mask(rgb, 8.0).any()


def test_demo_slide_mask_matches_tissue(small_slide, tmp_path):
    slide, _ = small_slide
    meta = mask_slide(slide, tmp_path / "m.png", tmp_path / "qc.png", TissueParams())
    assert 0.2 < meta["tissue_fraction"] < 0.6  # the renderer puts ~40% tissue on the slide
    rgb, _ = read_thumbnail(open_slide(slide), 256)
    from PIL import Image

    mask = np.asarray(Image.open(tmp_path / "m.png")) > 0
    rgb = np.asarray(Image.fromarray(rgb).resize(mask.shape[::-1]))
    glass = rgb.min(axis=-1) > 225
    assert (mask & glass).sum() < 0.05 * glass.sum()
    assert (tmp_path / "qc.png").stat().st_size > 0 and (tmp_path / "m.json").exists()


def test_pen_marks_are_not_tissue(inked_slide, tmp_path):
    slide, ink = inked_slide
    mask_slide(slide, tmp_path / "m.png", tmp_path / "qc.png", TissueParams())
    from PIL import Image

    mask = np.asarray(Image.open(tmp_path / "m.png")) > 0
    ink_small = np.asarray(Image.fromarray(ink).resize(mask.shape[::-1], Image.Resampling.NEAREST))
    assert (mask & ink_small).sum() < 0.05 * ink_small.sum()
    assert mask.mean() > 0.15  # the tissue around the strokes is still found


def test_real_svs_tissue_found_background_not(tmp_path):
    path = shared_slide("CMU-1-Small-Region.svs")
    meta = mask_slide(path, tmp_path / "m.png", tmp_path / "qc.png", TissueParams())
    from PIL import Image

    mask = np.asarray(Image.open(tmp_path / "m.png")) > 0
    assert 0.2 < meta["tissue_fraction"] < 0.7  # the README: ~66% background
    h, w = mask.shape
    assert not mask[: h // 10, -w // 4 :].any()  # top-right corner is glass
    assert mask[5 * h // 8 : 7 * h // 8, 4 * w // 12 : 9 * w // 12].mean() > 0.5  # the skin section


def test_real_dicom_mask(tmp_path):
    path = shared_slide("multiframe_camelyon_challenge_image.dcm")
    meta = mask_slide(path, tmp_path / "m.png", tmp_path / "qc.png", TissueParams())
    assert 0.05 < meta["tissue_fraction"] < 0.6

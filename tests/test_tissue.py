import numpy as np
import pytest

from conftest import shared_slide
from slidemil.slides.slide import open_slide, read_thumbnail
from slidemil.slides.tissue import TissueParams, mask_slide, otsu_threshold, tissue_mask


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


def _band_overlap(mask: np.ndarray, ink: np.ndarray) -> float:
    """Fraction of a drawn stroke (level-0 map `ink`) that the mask calls tissue."""
    from PIL import Image

    small = np.asarray(Image.fromarray(ink).resize(mask.shape[::-1], Image.Resampling.NEAREST))
    return (mask & small).sum() / max(small.sum(), 1)


def test_each_pen_colour_is_excluded_including_black(inked_slide, tmp_path):
    from PIL import Image

    slide, ink = inked_slide
    meta = mask_slide(slide, tmp_path / "m.png", tmp_path / "qc.png", TissueParams())
    mask = np.asarray(Image.open(tmp_path / "m.png")) > 0
    h = ink.shape[0]
    for i, colour in enumerate(("blue", "green", "black")):
        stroke = np.zeros_like(ink)
        y = int(h * (0.25 + 0.25 * i))
        stroke[y : y + 40] = ink[y : y + 40]
        assert _band_overlap(mask, stroke) < 0.15, colour
    assert meta["ink_fraction"] > 0.01  # recorded for the QC table


def test_black_ink_over_tissue_is_cut_out_but_dark_nuclei_are_not():
    from slidemil.slides.tissue import ink_mask

    um = 8.0
    rgb, tissue = _pink_disc(size=200)
    noise = np.random.default_rng(0).integers(-20, 21, rgb.shape)  # texture: a flat disc would read as blurry
    rgb = np.where(tissue[..., None], (rgb + noise).clip(0, 255), rgb).astype(np.uint8)
    rgb[99:102, 20:180] = (45, 45, 50)  # a thin black marker line (24 um) ...
    rgb[60:64, 20:180] = (44, 28, 38)  # ... and ink over pink tissue (220, 140, 190) x 0.2: tinted
    outside = tissue & ~ink_mask(rgb)
    mask = tissue_mask(rgb, um)
    assert not mask[99:102, 40:160].any() and not mask[60:64, 40:160].any()
    assert mask[outside].mean() > 0.9
    # without ink exclusion, closing and hole filling would have swallowed the thin strokes
    no_ink = tissue_mask(rgb, um, TissueParams(exclude_ink=False))
    assert no_ink[99:102, 40:160].mean() > 0.9 and no_ink[60:64, 40:160].mean() > 0.9
    nuclei = np.zeros((10, 10, 3), np.uint8) + np.array([70, 35, 110], np.uint8)  # dense haematoxylin
    assert not ink_mask(nuclei).any()


def _blurred_demo(seed: int = 3, sigma: float = 24.0):
    """A 3072 x 2048 demo slide at 0.5 mpp whose right half is out of focus (Gaussian, level-0 px)."""
    from scipy import ndimage as ndi

    from slidemil.cohorts.demo import DemoSlideSpec, render_slide

    # no lobules or mimics: their coarse gland/lumen contrast survives a blur (the demo's realism, not focus)
    spec = DemoSlideSpec(width=3072, height=2048, mpp=0.5, lobule_fraction=(0.0, 0.0), mimic_probability=(0.0, 0.0))
    rgb, _, _ = render_slide(seed, False, spec)
    blurred = rgb.copy()
    blurred[:, 1536:] = ndi.gaussian_filter(rgb[:, 1536:].astype(np.float32), (sigma, sigma, 0)).clip(0, 255)
    return rgb, blurred


def test_blurred_region_is_excluded_sharp_tissue_kept(tmp_path):
    from slidemil.cohorts.demo import write_pyramidal_tiff

    sharp, blurred = _blurred_demo()
    write_pyramidal_tiff(blurred, tmp_path / "blur.tiff", 0.5)
    meta = mask_slide(tmp_path / "blur.tiff", tmp_path / "m.png", tmp_path / "qc.png", TissueParams())
    off = mask_slide(tmp_path / "blur.tiff", tmp_path / "o.png", tmp_path / "qo.png", TissueParams(exclude_blur=False))
    from PIL import Image

    mask = np.asarray(Image.open(tmp_path / "m.png")) > 0
    ref = np.asarray(Image.open(tmp_path / "o.png")) > 0
    w = mask.shape[1] // 2
    assert ref[:, w + 4 :].sum() > 500  # the blurred half does look like tissue by colour
    assert mask[:, w + 4 :].sum() < 0.3 * ref[:, w + 4 :].sum()  # ... but is dropped as blurry
    assert mask[:, : w - 4].sum() >= 0.98 * ref[:, : w - 4].sum()  # sharp tissue untouched
    assert meta["blur_fraction"] > 0.05 and off["blur_fraction"] == 0


def test_blur_and_black_ink_defaults_keep_demo_tissue():
    from PIL import Image

    for seed in range(4):
        sharp, _ = _blurred_demo(seed)
        thumb = np.asarray(Image.fromarray(sharp).resize((192, 128), Image.Resampling.BOX))
        ref = tissue_mask(thumb, 8.0, TissueParams(exclude_blur=False, black_ink_value=0.0, min_value=0.0))
        assert tissue_mask(thumb, 8.0).sum() >= 0.99 * ref.sum(), seed


@pytest.mark.parametrize("name, mpp", [("CMU-1-Small-Region.svs", None), ("tcga-cr-7395-01a-01-ts1.svs", 0.25),
                                       ("multiframe_camelyon_challenge_image.dcm", None)])
def test_blur_and_black_ink_defaults_keep_real_tissue(tmp_path, name, mpp):
    path = shared_slide(name)
    meta = mask_slide(path, tmp_path / "m.png", tmp_path / "qc.png", TissueParams(), mpp_override=mpp)
    ref = mask_slide(path, tmp_path / "r.png", tmp_path / "qr.png",
                     TissueParams(exclude_blur=False, black_ink_value=0.0, min_value=0.0), mpp_override=mpp)
    assert meta["tissue_fraction"] >= 0.99 * ref["tissue_fraction"] > 0.05
    assert meta["blur_fraction"] < 0.01

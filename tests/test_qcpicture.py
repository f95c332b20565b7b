"""QC pictures: ~1000 px panels with the mask outlined, ink/blur tinted, kept tiles drawn, and a legend."""

import json

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage as ndi

from slidemil.slides import slide as slide_module
from slidemil.cohorts.demo import write_pyramidal_tiff
from slidemil.slides.qcpicture import COLOURS, QC_LONG_SIDE, draw_tiles, resize_nearest
from slidemil.slides.tiling import TileParams, tile_slide_or_flag
from slidemil.slides.tissue import TissueParams, mask_slide


def _near(img: np.ndarray, colour, tol: int = 40) -> np.ndarray:
    return (np.abs(img.astype(int) - np.array(colour)).max(axis=-1) <= tol)


def _exact(img: np.ndarray, colour) -> np.ndarray:
    return (img == np.array(colour, np.uint8)).all(axis=-1)


def _split(png, meta):
    pic = np.asarray(Image.open(png).convert("RGB"))
    w, h = meta["qc_size"]
    return pic, pic[:h, :w], pic[h:]


def test_mask_picture_is_1000px_with_outline_on_the_mask_ink_tinted_and_a_legend(inked_slide, tmp_path):
    slide, ink = inked_slide  # 1536 x 1024 px, blue/green/black strokes over tissue and glass
    meta = mask_slide(slide, tmp_path / "m.png", tmp_path / "qc.png", TissueParams())
    assert meta["qc_size"] == [QC_LONG_SIDE, round(1024 * QC_LONG_SIDE / 1536)]
    assert meta["qc_downsample"] == pytest.approx(1.536)
    pic, panel, strip = _split(tmp_path / "qc.png", meta)
    assert pic.shape[1] == QC_LONG_SIDE and 30 <= strip.shape[0] <= 120  # the legend below the panel

    mask = resize_nearest(np.asarray(Image.open(tmp_path / "m.png")) > 0, panel.shape[:2])
    outline = _exact(panel, COLOURS["tissue"])
    assert outline.sum() > 500 and not (outline & ~mask).any()  # drawn on the mask's edge, inside it
    assert (outline & ~ndi.binary_erosion(mask, iterations=3)).sum() == outline.sum()  # an edge, not a fill

    ink_panel = resize_nearest(ink, panel.shape[:2])
    ink_edge = _exact(panel, COLOURS["ink"])
    assert ink_edge.sum() > 200  # the strokes' exclusion shows
    mask_px = meta["downsample"] / meta["qc_downsample"]  # panel px per mask px (~10): the ink map's blocks
    near_ink = ndi.binary_dilation(ink_panel, iterations=round(2.5 * mask_px))  # dilated by one mask px, blocky
    assert (ink_edge & near_ink).sum() > 0.95 * ink_edge.sum()

    for name in ("tissue", "ink", "blur"):  # one swatch per overlay colour in the legend
        assert _near(strip, COLOURS[name]).sum() > 20, name
    assert _near(strip, COLOURS["tiles"]).sum() == 0  # no tiles yet
    assert (strip.min(axis=-1) < 80).sum() > 200  # the legend's text


def test_tile_picture_draws_each_kept_tile_on_the_mask_panel(small_slide, tmp_path):
    slide, _ = small_slide
    meta = mask_slide(slide, tmp_path / "m.png", tmp_path / "mqc.png", TissueParams())
    params = TileParams(target_mpp=1.0, tile_size=64)
    attrs = tile_slide_or_flag(slide, "s", tmp_path / "m.png", tmp_path / "mqc.png", tmp_path / "t.zarr",
                               tmp_path / "qc.png", params)
    assert attrs["n_tiles"] > 10
    pic, panel, strip = _split(tmp_path / "qc.png", meta)
    _, mask_panel, _ = _split(tmp_path / "mqc.png", meta)
    assert pic.shape[1] == QC_LONG_SIDE

    import zarr

    coords = zarr.open_group(str(tmp_path / "t.zarr"), mode="r")["coords"][:]
    side = attrs["tile_size_level0"] / meta["qc_downsample"]  # 128 level-0 px: ~83 panel px
    inside = np.zeros(panel.shape[:2], bool)
    for x, y in coords / meta["qc_downsample"]:
        inside[round(y) : round(y + side) + 1, round(x) : round(x + side) + 1] = True
    blue = _exact(panel, COLOURS["tiles"])
    assert blue.sum() > 0.8 * attrs["n_tiles"] * 2 * side  # each tile's outline, shared edges counted once
    assert not (blue & ~inside).any()
    changed = (panel != mask_panel).any(axis=-1)
    assert not (changed & ~blue).any()  # the rest is the mask stage's panel, pixel for pixel
    assert _near(strip, COLOURS["tiles"]).sum() > 20  # "kept tiles" in the legend


def test_tiny_tiles_are_filled_not_outlined():
    panel = np.full((40, 40, 3), 200, np.uint8)
    out = draw_tiles(panel, np.array([[10, 10, 12, 12], [20, 20, 22, 22]]))
    assert (out[10:13, 10:13] != 200).any(axis=-1).all() and (out[0:9, 0:9] == 200).all()
    assert not _exact(out, COLOURS["tiles"]).any()  # a tint: tissue under the tiles stays visible


def test_big_slide_qc_reads_a_1000px_thumbnail_not_level0(tmp_path, monkeypatch):
    rgb = np.full((3072, 4096, 3), 240, np.uint8)
    rgb[800:2200, 1000:3000] = (210, 130, 180)
    write_pyramidal_tiff(rgb, tmp_path / "big.tiff", 0.5)
    sizes = []
    real = slide_module.read_thumbnail

    def spy(slide, max_size, *a, **k):
        sizes.append(max_size)
        return real(slide, max_size, *a, **k)

    monkeypatch.setattr(slide_module, "read_thumbnail", spy)
    meta = mask_slide(tmp_path / "big.tiff", tmp_path / "m.png", tmp_path / "qc.png", TissueParams())
    assert sizes == [256, QC_LONG_SIDE]  # the mask at 8 um/px, then the picture; never the 4096 px level 0
    assert meta["qc_size"] == [1000, 750]
    side = json.loads((tmp_path / "m.json").read_text())["qc_size"]
    assert Image.open(tmp_path / "qc.png").size[0] == side[0] == 1000

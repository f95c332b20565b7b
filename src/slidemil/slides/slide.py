"""Opening slides, resolving microns-per-pixel and choosing the pyramid level to read.

Every failure here is a `SlideError` (slides/errors.py). Files OpenSlide refuses but libvips reads
open as a `VipsSlide` (slides/vips.py); TIFF-based files that are cut short or damaged are reported
as such (slides/tiff_damage.py); tiled JPEG TIFF levels are read tile by tile in slides/jpeg_tiles.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import NewType

import numpy as np

from slidemil.slides.errors import SlideError
from slidemil.slides.tiff_damage import TIFF_PAGE_VENDORS, raise_if_damaged
from slidemil.slides.vips import VipsSlide, open_vips_slide

MPP = NewType("MPP", float)  # microns per pixel

# Scans rarely store mpp exactly (0.2528 for "0.25"): a level within this relative tolerance of the
# target is read as-is instead of being resampled.
MPP_TOLERANCE = 0.05


def open_slide(path: str | Path):
    """Open a slide with OpenSlide, or with libvips what OpenSlide refuses; every failure a `SlideError`.

    Returns an OpenSlide, or a `VipsSlide` (same interface) for plain images OpenSlide refuses. A
    TIFF-based file (SVS, TIFF, BigTIFF) whose layout runs past its end is reported as truncated
    or damaged before any pixel is read.
    """
    import openslide

    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: file not found; fix the path in samples.tsv")
    if path.stat().st_size == 0:
        raise SlideError(f"{path}: file is empty; re-copy the slide or remove it from samples.tsv")
    try:
        slide = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise_if_damaged(path)
        return open_vips_slide(path)
    except openslide.OpenSlideError as e:
        raise_if_damaged(path)
        raise SlideError(f"{path}: OpenSlide cannot read it ({e}); the file may be truncated or "
                         "corrupt: re-copy it or remove it from samples.tsv") from None
    # drivers whose files are plain TIFF directories (NDPI's 64-bit offset extension is not): a
    # truncated one opens when its directories survived, then fails mid-tiling without this
    if slide.properties.get("openslide.vendor") in TIFF_PAGE_VENDORS:
        try:
            raise_if_damaged(path)
        except SlideError:
            slide.close()
            raise
    return slide


def slide_mpp(slide, path: str | Path, override: float | None = None) -> MPP:
    """Level-0 mpp from the slide's metadata, else from `override` (samples.tsv), else an error."""
    import openslide

    props = slide.properties
    for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
        try:
            value = float(props.get(key, "nan"))
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value > 0:
            return MPP(value)
    if override is not None and math.isfinite(override) and override > 0:
        return MPP(float(override))
    why = getattr(slide, "mpp_note", "")
    raise SlideError(f"{path}: no microns-per-pixel in the slide metadata{f' ({why})' if why else ''}; add its "
                     "scan resolution in an `mpp` column of samples.tsv (e.g. 0.25 for 40x, 0.5 for 20x)")


@dataclass(frozen=True)
class ReadPlan:
    """How to obtain pixels at `target_mpp`: read `level` and scale by `scale` (<= 1 shrinks)."""

    level: int
    level_downsample: float  # level-0 px per level px
    scale: float  # level px -> target px
    slide_mpp: float
    target_mpp: float

    @property
    def target_downsample(self) -> float:
        """Level-0 px per target px."""
        return self.target_mpp / self.slide_mpp


def plan_read(level_downsamples: tuple[float, ...] | list[float], mpp: float, target_mpp: float,
              path: str | Path = "slide", allow_upsample: bool = False) -> ReadPlan:
    """Pick the coarsest level that is not coarser than the target (never guess by level index)."""
    want = target_mpp / mpp  # level-0 px per target px
    if want < 1 - MPP_TOLERANCE and not allow_upsample:
        raise SlideError(f"{path}: target_mpp {target_mpp} is finer than the scan ({mpp:.3f} mpp); "
                         "lower target_mpp's resolution demand (raise it) or set tile.allow_upsample: true")
    best = 0
    for i, ds in enumerate(level_downsamples):
        if ds <= want * (1 + MPP_TOLERANCE):
            best = i if ds >= level_downsamples[best] else best
    ds = float(level_downsamples[best])
    scale = ds / want
    if abs(scale - 1) <= MPP_TOLERANCE:
        scale = 1.0
    return ReadPlan(level=best, level_downsample=ds, scale=scale, slide_mpp=float(mpp), target_mpp=float(target_mpp))


def rgba_to_rgb(img):
    """Composite an OpenSlide RGBA region on white: pixels outside the scan read as background, not ink."""
    from PIL import Image

    if img.mode != "RGBA":
        return img.convert("RGB")
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, img).convert("RGB")


def read_thumbnail(slide, max_size: int, band_pixels: int = 1 << 25) -> tuple[np.ndarray, float]:
    """RGB thumbnail whose longer side is <= max_size, and its level-0 px per thumbnail px.

    The best level is read in horizontal bands of about `band_pixels` pixels, each shrunk before
    the next is read: a slide without a pyramid (one 100k x 75k level) would otherwise need ~30 GB.
    """
    from PIL import Image

    w, h = slide.dimensions
    factor = max(max(w, h) / max_size, 1.0)
    tw, th = max(1, round(w / factor)), max(1, round(h / factor))
    if isinstance(slide, VipsSlide):  # one streamed libvips shrink: faster than bands of RGBA regions
        return slide.thumbnail_rgb(tw, th), w / tw
    level = slide.get_best_level_for_downsample(factor)
    lw, lh = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    out = Image.new("RGB", (tw, th), "white")
    band = max(1, min(lh, band_pixels // max(lw, 1)))
    for y in range(0, lh, band):
        bh = min(band, lh - y)
        ty0, ty1 = round(y * th / lh), round((y + bh) * th / lh)
        if ty1 <= ty0:
            continue
        region = rgba_to_rgb(slide.read_region((0, round(y * ds)), level, (lw, bh)))
        out.paste(region.resize((tw, ty1 - ty0), Image.Resampling.BOX), (0, ty0))
    return np.asarray(out), w / tw

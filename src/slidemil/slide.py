"""Opening slides, resolving microns-per-pixel and choosing the pyramid level to read.

Every failure here is a `SlideError` whose message names the file and what to do, so a rule log
carries one readable line instead of a traceback from inside OpenSlide.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NewType

import numpy as np

MPP = NewType("MPP", float)  # microns per pixel

# Scans rarely store mpp exactly (0.2528 for "0.25"): a level within this relative tolerance of the
# target is read as-is instead of being resampled.
MPP_TOLERANCE = 0.05


class SlideError(RuntimeError):
    """A slide cannot be used; the message names the file and the fix."""


def open_slide(path: str | Path):
    """Open a slide with OpenSlide, turning every failure into a one-line `SlideError`."""
    import openslide

    path = Path(path)
    if not path.exists():
        raise SlideError(f"{path}: file not found; fix the path in samples.tsv")
    if path.stat().st_size == 0:
        raise SlideError(f"{path}: file is empty; re-copy the slide or remove it from samples.tsv")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideError(f"{path}: not a slide format OpenSlide can read; convert it to tiled "
                         "pyramidal TIFF or remove it from samples.tsv") from None
    except openslide.OpenSlideError as e:
        raise SlideError(f"{path}: OpenSlide cannot read it ({e}); the file may be truncated or "
                         "corrupt: re-copy it or remove it from samples.tsv") from None


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
    raise SlideError(f"{path}: no microns-per-pixel in the slide metadata; add its scan resolution "
                     "in the `mpp` column of samples.tsv (e.g. 0.25 for 40x, 0.5 for 20x)")


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
    level = slide.get_best_level_for_downsample(factor)
    lw, lh = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    tw, th = max(1, round(w / factor)), max(1, round(h / factor))
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


# --- direct JPEG tile access (the fast read path for tiled JPEG TIFFs) --------------------------

try:  # optional: libjpeg-turbo's TurboJPEG API with DCT scaling and little per-call overhead
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - Pillow's draft mode / imagecodecs do the same, slower
    _simplejpeg = None

# APP14 "Adobe" marker, transform 0: the three components are R, G, B (no YCbCr conversion).
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"

# OpenSlide drivers whose pyramid levels are TIFF pages pixel for pixel (no overlaps, no stitching).
_TIFF_PAGE_VENDORS = ("generic-tiff", "aperio")


class TiledJpegLevel:
    """One pyramid level of a tiled JPEG TIFF (generic TIFF, Aperio SVS), read tile by tile.

    Bypasses OpenSlide: tile bytes come from `os.pread` (thread-safe, no shared file position) and
    are decoded with simplejpeg (TurboJPEG; imagecodecs or Pillow without it), with libjpeg's DCT
    scaling (1/2, 1/4, 1/8) when the caller wants a smaller image anyway. `jpeg()` gives a source
    tile as a standalone JPEG file, so a stored tile that is exactly one source tile can be copied
    without decoding and re-encoding.
    """

    def __init__(self, path: Path, page, level: int):
        from tifffile.tifffile import jpeg_decode_colorspace

        self.fd = -1
        self.path, self.level = Path(path), level
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.tile_w, self.tile_h = int(page.tilewidth), int(page.tilelength)
        self.n_cols = -(-self.width // self.tile_w)
        self.n_rows = -(-self.height // self.tile_h)
        self.offsets = np.asarray(page.dataoffsets, np.int64).reshape(self.n_rows, self.n_cols)
        self.counts = np.asarray(page.databytecounts, np.int64).reshape(self.n_rows, self.n_cols)
        tables = page.jpegtables
        self.tables = bytes(tables) if tables else None
        self.colorspace, self.outcolorspace = jpeg_decode_colorspace(
            page.photometric, page.planarconfig, page.extrasamples, page.is_jfif)
        # The header that makes a tile a JPEG file of its own: SOI, the shared tables, and for the
        # RGB-coded tiles of Aperio (photometric RGB, no JFIF marker) an Adobe marker saying
        # "no colour transform", without which every decoder would take them for YCbCr.
        soi, tables_body = b"\xff\xd8", (self.tables[2:-2] if self.tables and len(self.tables) > 4 else b"")
        if self.colorspace is None:
            self.header: bytes | None = soi + tables_body
        elif self.colorspace == 2 and self.outcolorspace == 2:
            self.header = soi + _ADOBE_RGB + tables_body
        else:
            self.header = None
        self.standalone = self.header is not None
        self.fd = os.open(self.path, os.O_RDONLY)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self):
        self.close()

    def raw(self, tx: int, ty: int) -> bytes:
        n = int(self.counts[ty, tx])
        data = os.pread(self.fd, n, int(self.offsets[ty, tx])) if n else b""
        if len(data) != n:
            raise SlideError(f"{self.path}: tile ({tx}, {ty}) of level {self.level} is cut short; the file "
                             "is truncated: re-copy it or remove it from samples.tsv")
        return data

    def jpeg(self, tx: int, ty: int) -> bytes | None:
        """Source tile (tx, ty) as a standalone JPEG file, or None (missing tile, or not standalone)."""
        data = self.raw(tx, ty)
        if not data or self.header is None:
            return None
        # a copied tile is never decoded: check its frame (SOI ... EOI) so that zeroed or cut-off
        # tile bytes fail here, naming the file, instead of landing in the store as garbage
        if not (data[:2] == b"\xff\xd8" and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"):
            raise SlideError(f"{self.path}: tile ({tx}, {ty}) of level {self.level} is not a complete JPEG; "
                             "the file may be truncated or corrupt: re-copy it or remove it from samples.tsv")
        return self.header + data[2:]  # the tile's own SOI is in the header

    def decode(self, tx: int, ty: int, denom: int = 1) -> np.ndarray:
        """Tile (tx, ty) as uint8 [tile_h / denom, tile_w / denom, 3]; a missing tile reads white.

        denom > 1 needs `standalone` and uses libjpeg's scaled IDCT (the tile decodes straight to
        the smaller size: ~1.5x faster than a full decode with simplejpeg, the same pixels as Pillow's
        `draft`, which is the fallback when simplejpeg is not installed).
        """
        h, w = self.tile_h // denom, self.tile_w // denom
        try:
            if self.standalone and _simplejpeg is not None:
                data = self.jpeg(tx, ty)
                if data is None:
                    return np.full((h, w, 3), 255, np.uint8)
                out = _simplejpeg.decode_jpeg(data, colorspace="RGB", min_height=h, min_width=w)
            elif denom == 1:
                data = self.raw(tx, ty)
                if not data:
                    return np.full((h, w, 3), 255, np.uint8)
                import imagecodecs

                out = imagecodecs.jpeg8_decode(data, tables=self.tables, colorspace=self.colorspace,
                                               outcolorspace=self.outcolorspace)
            elif self.standalone:
                data = self.jpeg(tx, ty)
                if data is None:
                    return np.full((h, w, 3), 255, np.uint8)
                import io

                from PIL import Image

                with Image.open(io.BytesIO(data)) as im:
                    im.draft("RGB", (w, h))  # libjpeg scaled IDCT: decodes straight to 1/denom size
                    out = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))
            else:
                raise SlideError(f"{self.path}: DCT-scaled decoding (1/{denom}) needs standalone tiles")
        except SlideError:
            raise
        except Exception as e:  # imagecodecs / simplejpeg / Pillow decode errors: a corrupt tile
            raise SlideError(f"{self.path}: cannot decode tile ({tx}, {ty}) of level {self.level} ({e}); the "
                             "file may be corrupt: re-copy it or remove it from samples.tsv") from None
        if out.shape != (h, w, 3):
            raise SlideError(f"{self.path}: tile ({tx}, {ty}) of level {self.level} decodes to {out.shape}, "
                             f"not {(h, w, 3)}; convert the slide to a standard tiled pyramidal TIFF")
        return out


def open_tiled_jpeg_level(path: str | Path, slide, level: int) -> TiledJpegLevel | None:
    """Direct JPEG tile access to OpenSlide level `level` of `slide`, or None to read through OpenSlide.

    Only for drivers whose levels are plain TIFF pages (generic TIFF, Aperio), and only when the page
    is tiled, 8-bit RGB, JPEG, and its size is the level's: anything else (JPEG 2000 SVS, NDPI,
    MRXS, DICOM, ...) keeps the OpenSlide path.
    """
    if slide.properties.get("openslide.vendor") not in _TIFF_PAGE_VENDORS:
        return None
    try:
        import tifffile

        with tifffile.TiffFile(path) as tf:
            for page in tf.pages:
                if (page.is_tiled and (page.imagewidth, page.imagelength) == tuple(slide.level_dimensions[level])
                        and page.compression == 7 and page.samplesperpixel == 3 and page.bitspersample == 8
                        and page.planarconfig == 1 and page.imagedepth == 1 and page.tiledepth == 1
                        and not page.extrasamples and page.photometric in (2, 6)):
                    lv = TiledJpegLevel(Path(path), page, level)
                    if lv.offsets.size and (lv.offsets.size == lv.n_rows * lv.n_cols):
                        return lv
                    lv.close()
                    return None
    except Exception:  # tifffile cannot parse what OpenSlide can: let OpenSlide read it
        return None
    return None

"""Direct JPEG tile access, the fast read path for tiled JPEG TIFFs: a pyramid level's tiles read with
`os.pread` and decoded by TurboJPEG (with DCT scaling), or copied as standalone JPEG files.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from slidemil.slides.errors import SlideError
from slidemil.slides.tiff_damage import TIFF_PAGE_VENDORS

try:  # optional: libjpeg-turbo's TurboJPEG API with DCT scaling and little per-call overhead
    import simplejpeg as _simplejpeg
except ImportError:  # pragma: no cover - Pillow's draft mode / imagecodecs do the same, slower
    _simplejpeg = None

# APP14 "Adobe" marker, transform 0: the three components are R, G, B (no YCbCr conversion).
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


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
    if slide.properties.get("openslide.vendor") not in TIFF_PAGE_VENDORS:
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

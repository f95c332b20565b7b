"""Opening slides, resolving microns-per-pixel and choosing the pyramid level to read.

Every failure here is a `SlideError` whose message names the file and what to do, so a rule log
carries one readable line instead of a traceback from inside OpenSlide.

Files OpenSlide refuses but libvips reads (plain striped TIFFs without tiles or pyramid, a common
microscope export; PNG, JPEG, ...) open as a `VipsSlide`: the same interface (one level), regions
decoded on demand from the file. No temporary copy: libvips' TIFF loader decodes only the strips a
region covers, even with access="random" (measured on a 9216 x 8192 LZW striped TIFF, 216 MB
decoded: 255 random 512-px crops raised peak RSS by 30 MB), so memory is bounded by the regions
asked for (a strip of tiles; thumbnails are read in bands) plus libvips' caches, not by the image.
Formats libvips cannot read partially (PNG, JPEG) it decodes once into memory up to its 100 MB disc
threshold and above that into a temporary file under $TMPDIR, so they stay bounded too. A
pyramidal temporary TIFF would also bound memory but costs a full decode and re-encode per job and
disk in the job's tmp dir; a plain image has one level, so coarse targets are read from level 0 and
resampled, like any single-level slide.

A file with a TIFF header whose image directories or pixel data lie beyond its end (a copy cut
short, a damaged SVS) is reported as truncated or damaged, not as an unknown format.
"""

from __future__ import annotations

import math
import os
import struct
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
        _raise_if_damaged(path)
        return open_vips_slide(path)
    except openslide.OpenSlideError as e:
        _raise_if_damaged(path)
        raise SlideError(f"{path}: OpenSlide cannot read it ({e}); the file may be truncated or "
                         "corrupt: re-copy it or remove it from samples.tsv") from None
    # drivers whose files are plain TIFF directories (NDPI's 64-bit offset extension is not): a
    # truncated one opens when its directories survived, then fails mid-tiling without this
    if slide.properties.get("openslide.vendor") in _TIFF_PAGE_VENDORS:
        try:
            _raise_if_damaged(path)
        except SlideError:
            slide.close()
            raise
    return slide


def _raise_if_damaged(path: Path) -> None:
    damage = tiff_damage(path)
    if damage is not None:
        kind, detail = damage
        raise SlideError(f"{path}: truncated or damaged {kind}: the TIFF header is readable but {detail}; "
                         "re-copy the file or remove it from samples.tsv")


# TIFF field types of offset/count arrays: numpy dtype per type code (SHORT, LONG, LONG8)
_TIFF_INT = {3: "u2", 4: "u4", 16: "u8"}
_TIFF_DATA_TAGS = {273: 279, 324: 325}  # StripOffsets -> StripByteCounts, TileOffsets -> TileByteCounts


def tiff_damage(path: str | Path) -> tuple[str, str] | None:
    """(kind, what is wrong) when a TIFF-based file is cut short or damaged; None when its layout fits.

    Walks the chain of image directories (IFDs) and checks that every directory, its offset tables
    and the strips or tiles they point to lie inside the file. Files that are not TIFF (no TIFF
    magic) give None. `kind` is "Aperio SVS" (from the first ImageDescription, or the .svs suffix
    when that directory is lost), "BigTIFF" or "TIFF".
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
        order = {b"II": "<", b"MM": ">"}.get(head[:2])
        if order is None or len(head) < 8:
            return None
        version = struct.unpack(order + "H", head[2:4])[0]
        if version not in (42, 43) or (version == 43 and len(head) < 16):
            return None
        big = version == 43
        word, wsize, esize = ("Q", 8, 20) if big else ("I", 4, 12)  # offset type, its size, IFD entry size
        offset = struct.unpack(order + word, head[8:16] if big else head[4:8])[0]
        kind = "BigTIFF" if big else "TIFF"
        if path.suffix.lower() == ".svs":
            kind = "Aperio SVS"
        seen: set[int] = set()
        index = 0
        while offset:
            where = f"image directory {index} (at byte {offset})"
            if offset in seen:
                return kind, f"{where} points back to an earlier one"
            seen.add(offset)
            nsize = 8 if big else 2
            if offset + nsize > size:
                return kind, f"{where} lies beyond the end of the file ({size} bytes)"
            f.seek(offset)
            count = struct.unpack(order + ("Q" if big else "H"), f.read(nsize))[0]
            end = offset + nsize + count * esize + wsize
            if end > size:
                return kind, f"{where} runs past the end of the file ({size} bytes)"
            raw = f.read(count * esize)
            tags: dict[int, tuple[int, int, bytes]] = {}
            for k in range(count):
                e = raw[k * esize : (k + 1) * esize]
                tag, typ = struct.unpack(order + "HH", e[:4])
                tags[tag] = (typ, struct.unpack(order + word, e[4 : 4 + wsize])[0], e[4 + wsize :])
            next_offset = struct.unpack(order + word, f.read(wsize))[0]
            if index == 0 and 270 in tags and _tiff_text(f, order, word, tags[270], size).startswith("Aperio"):
                kind = "Aperio SVS"
            for off_tag, cnt_tag in _TIFF_DATA_TAGS.items():
                if off_tag not in tags or cnt_tag not in tags:
                    continue
                offsets = _tiff_ints(f, order, word, tags[off_tag], size)
                counts = _tiff_ints(f, order, word, tags[cnt_tag], size)
                if offsets is None or counts is None or len(offsets) != len(counts):
                    return kind, (f"{where} has a damaged table of strip or tile offsets, or one beyond the end "
                                  f"of the file ({size} bytes)")
                ends = offsets.astype(np.uint64) + counts.astype(np.uint64)
                if len(ends) and int(ends.max()) > size:
                    cut = int((ends > size).sum())
                    return kind, (f"{cut} of the {len(ends)} strips or tiles of image {index} lie beyond the end "
                                  f"of the file (they reach byte {int(ends.max())}, the file has {size})")
            offset, index = next_offset, index + 1
    return None


def _tiff_field(f, order: str, word: str, entry: tuple[int, int, bytes], itemsize: int, size: int) -> bytes | None:
    """A TIFF field's bytes: inline in its entry, or read at the offset the entry holds (None past the end)."""
    _, n, inline = entry
    nbytes = n * itemsize
    if nbytes <= len(inline):
        return inline[:nbytes]
    at = struct.unpack(order + word, inline)[0]
    if at + nbytes > size:
        return None
    f.seek(at)
    return f.read(nbytes)


def _tiff_ints(f, order: str, word: str, entry: tuple[int, int, bytes], size: int) -> np.ndarray | None:
    dtype = _TIFF_INT.get(entry[0])
    data = _tiff_field(f, order, word, entry, int(dtype[1]), size) if dtype else None
    return None if data is None else np.frombuffer(data, order + dtype)


def _tiff_text(f, order: str, word: str, entry: tuple[int, int, bytes], size: int) -> str:
    return (_tiff_field(f, order, word, entry, 1, size) or b"").decode("latin-1")


# --- images OpenSlide refuses: libvips ------------------------------------------------------------

# Resolution tags imply a scan's mpp only in this range: image tools write 72-300 dpi by default
# (85-353 um/px) and libvips reports 1 px/mm (1000 um/px) when a file has no resolution at all.
TAG_MPP_RANGE = (0.01, 50.0)


def _vips_rgb(image):
    """The image as 8-bit sRGB, 3 bands (alpha flattened on white), lazily: nothing is decoded here."""
    if image.hasalpha():
        image = image.flatten(background=[255] * (image.bands - 1))
    if image.interpretation not in ("srgb", "rgb") or image.format != "uchar" or image.bands != 3:
        image = image.colourspace("srgb")
        if image.format != "uchar":
            image = image.cast("uchar")
    return image


def _vips_mpp(image) -> tuple[float | None, str]:
    """mpp from the file's resolution (libvips' xres, px per mm) when plausible, and why not otherwise."""
    try:
        xres = float(image.get("xres"))
    except Exception:  # noqa: BLE001 - no resolution field at all
        xres = 0.0
    mpp = 1000.0 / xres if xres > 0 else math.inf
    lo, hi = TAG_MPP_RANGE
    if lo <= mpp <= hi:
        return mpp, ""
    if not math.isfinite(mpp) or abs(xres - 1.0) < 1e-9:  # libvips' default: the file has no resolution
        return None, "the file has no resolution tags"
    return None, (f"its resolution tags say {xres * 25.4:.0f} dpi ({mpp:.1f} um/px), an image tool's default, "
                  "not a scan resolution")


class VipsSlide:
    """A single-level slide read with libvips, for files OpenSlide refuses (see the module docstring).

    OpenSlide's interface as slidemil and CLAM-style readers use it: `dimensions`,
    `level_dimensions`, `level_downsamples`, `properties` (openslide.mpp-x/y when the file's
    resolution gives a plausible mpp), `read_region` (RGBA, transparent outside the image) and
    `get_thumbnail`. Regions are decoded on demand; safe to read from several threads.
    """

    def __init__(self, path: str | Path, image):
        self.path = Path(path)
        self._image = _vips_rgb(image)
        mpp, self.mpp_note = _vips_mpp(image)
        self._properties = {"openslide.vendor": "libvips", "slidemil.loader": str(image.get("vips-loader"))}
        if mpp is not None:
            self._properties["openslide.mpp-x"] = self._properties["openslide.mpp-y"] = repr(mpp)

    @property
    def dimensions(self) -> tuple[int, int]:
        return self._image.width, self._image.height

    @property
    def level_count(self) -> int:
        return 1

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return (self.dimensions,)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    @property
    def properties(self) -> dict[str, str]:
        return self._properties

    @property
    def associated_images(self) -> dict:
        return {}

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        """RGBA PIL image of `size` at level-0 `location`, as OpenSlide's: transparent outside the image."""
        from PIL import Image

        if level != 0:
            raise ValueError(f"{self.path}: level {level} requested; a plain image has only level 0")
        (x, y), (w, h) = location, size
        out = np.zeros((h, w, 4), np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self._image.width), min(y + h, self._image.height)
        if x1 > x0 and y1 > y0:
            region = self._image.crop(x0, y0, x1 - x0, y1 - y0)
            pixels = np.ndarray(buffer=region.write_to_memory(), dtype=np.uint8, shape=(y1 - y0, x1 - x0, 3))
            out[y0 - y : y1 - y, x0 - x : x1 - x, :3] = pixels
            out[y0 - y : y1 - y, x0 - x : x1 - x, 3] = 255
        return Image.fromarray(out, "RGBA")

    def thumbnail_rgb(self, width: int, height: int) -> np.ndarray:
        """uint8 [height, width, 3]: the image shrunk by libvips as it streams (box-filtered, like
        read_thumbnail's bands), never whole in memory."""
        import pyvips

        w, h = self.dimensions
        # a sequential pass of its own: libvips then keeps a few strips, where a whole-image pass
        # through the random-access image held half of the image (measured +240 MB vs +40 MB, 9k x 8k)
        image = _vips_rgb(pyvips.Image.new_from_file(str(self.path), access="sequential"))
        small = image.resize(width / w, vscale=height / h, kernel="linear")
        small = small.gravity("north-west", width, height, extend="copy")  # libvips may round one px off
        return np.ndarray(buffer=small.write_to_memory(), dtype=np.uint8, shape=(height, width, 3))

    def get_thumbnail(self, size: tuple[int, int]):
        """RGB PIL thumbnail within `size` (OpenSlide's method, without reading the whole level)."""
        from PIL import Image

        w, h = self.dimensions
        scale = min(size[0] / w, size[1] / h, 1.0)
        return Image.fromarray(self.thumbnail_rgb(max(1, round(w * scale)), max(1, round(h * scale))), "RGB")

    def close(self) -> None:
        self._image = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_vips_slide(path: Path) -> VipsSlide:
    """A `VipsSlide` of `path`, or the one-line error for a file neither OpenSlide nor libvips reads."""
    try:
        import pyvips

        image = pyvips.Image.new_from_file(str(path), access="random")  # reads the header only
    except Exception:  # noqa: BLE001 - pyvips.Error, or libvips missing: OpenSlide's verdict stands
        raise SlideError(f"{path}: not a slide format OpenSlide or libvips can read; convert it to tiled "
                         "pyramidal TIFF or remove it from samples.tsv") from None
    return VipsSlide(path, image)


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

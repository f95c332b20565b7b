"""Slides OpenSlide refuses but libvips reads: plain striped TIFFs without tiles or pyramid (a common
microscope export), PNG, JPEG, ... open as a `VipsSlide`: OpenSlide's interface (one level), regions
decoded on demand from the file.

No temporary copy: libvips' TIFF loader decodes only the strips a region covers, even with
access="random" (measured on a 9216 x 8192 LZW striped TIFF, 216 MB decoded: 255 random 512-px
crops raised peak RSS by 30 MB), so memory is bounded by the regions asked for (a strip of tiles;
thumbnails are read in bands) plus libvips' caches, not by the image. Formats libvips cannot read
partially (PNG, JPEG) it decodes once into memory up to its 100 MB disc threshold and above that
into a temporary file under $TMPDIR, so they stay bounded too. A pyramidal temporary TIFF would
also bound memory but costs a full decode and re-encode per job and disk in the job's tmp dir; a
plain image has one level, so coarse targets are read from level 0 and resampled, like any
single-level slide.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from slidemil.slides.errors import SlideError

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

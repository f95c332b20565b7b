"""Opening slides, resolving microns-per-pixel and choosing the pyramid level to read.

Every failure here is a `SlideError` whose message names the file and what to do, so a rule log
carries one readable line instead of a traceback from inside OpenSlide.
"""

from __future__ import annotations

import math
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


def read_thumbnail(slide, max_size: int) -> tuple[np.ndarray, float]:
    """RGB thumbnail whose longer side is <= max_size, and its level-0 px per thumbnail px."""
    w, h = slide.dimensions
    factor = max(w, h) / max_size
    level = slide.get_best_level_for_downsample(max(factor, 1.0))
    lw, lh = slide.level_dimensions[level]
    img = rgba_to_rgb(slide.read_region((0, 0), level, (lw, lh)))
    tw, th = max(1, round(w / max(factor, 1.0))), max(1, round(h / max(factor, 1.0)))
    if (tw, th) != (lw, lh):
        from PIL import Image

        img = img.resize((tw, th), Image.Resampling.BOX)
    return np.asarray(img), w / tw

"""Per-slide failures as data: a slide that cannot be used yields valid outputs flagged `failed`.

Snakemake cannot run the cohort-level rules (QC table, folds, MIL, evaluate) once a per-slide job
fails, so with `on_slide_error: skip` the mask and tile stages turn a slide problem into outputs
that say so: an empty mask with `status: failed` and the reason in its sidecar, a placeholder QC
picture, and a tile store with 0 tiles whose attrs carry the status and reason. Downstream stages
pass the flag along; MIL skips the bag with a warning; the cohort QC table lists the reason.
"""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path
from typing import Any

import numpy as np

from slidemil import __version__
from slidemil.files import atomic_path, save_png, write_text

log = logging.getLogger(__name__)

OK, EMPTY, FAILED = "ok", "empty", "failed"


def slide_read_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this slide file is unusable", not "slidemil has a bug".

    SlideError (raised by the slide readers with a message naming the file and the fix) and the
    decode errors of the libraries that read pixels (OpenSlide, libvips, tifffile, Pillow): a slide
    that opens but whose tiles are truncated or corrupt raises those mid-read.
    """
    from slidemil.slides.errors import SlideError

    errors: list[type[BaseException]] = [SlideError]
    try:
        import openslide

        errors.append(openslide.OpenSlideError)
    except ImportError:  # pragma: no cover - openslide is a dependency
        pass
    try:
        import pyvips

        errors.append(pyvips.Error)
    except (ImportError, OSError):  # pragma: no cover - pyvips is optional at run time
        pass
    try:
        import tifffile

        errors.append(tifffile.TiffFileError)
    except ImportError:  # pragma: no cover
        pass
    from PIL import UnidentifiedImageError

    errors.append(UnidentifiedImageError)
    return tuple(errors)


def failure_reason(exc: BaseException, slide_path: str | Path) -> str:
    """One line: the SlideError message as is, a library decode error with the file and a fix."""
    from slidemil.slides.errors import SlideError

    msg = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, SlideError):
        return msg
    return (f"{slide_path}: cannot decode the image data ({msg}); the file may be truncated or corrupt: "
            "re-copy it or remove it from samples.tsv")


def failure_picture(slide_id: str, reason: str, status: str = FAILED, width: int = 480) -> np.ndarray:
    """A grey placeholder QC picture [H, W, 3] uint8 that says which slide failed and why."""
    from PIL import Image, ImageDraw

    lines = [f"{slide_id}: {status.upper()}", *textwrap.wrap(reason, width=width // 7)]
    img = Image.new("RGB", (width, 24 + 14 * len(lines)), (150, 150, 150))
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((8, 8 + 14 * i), line, fill=(160, 0, 0) if i == 0 else (0, 0, 0))
    return np.asarray(img)


def write_failed_mask(out_png: str | Path, qc_png: str | Path, slide_id: str, reason: str,
                      slide_path: str | Path | None = None) -> dict[str, Any]:
    """The mask stage's outputs for an unusable slide: empty mask, sidecar with status/reason, QC."""
    out_png = Path(out_png)
    meta = {"slide_id": slide_id, "status": FAILED, "reason": reason, "source_path": str(slide_path),
            "downsample": 1.0, "slide_mpp": None, "mpp_source": None, "width": 0, "height": 0,
            "tissue_fraction": 0.0, "tissue_area_mm2": 0.0, "ink_fraction": 0.0, "blur_fraction": 0.0,
            "slidemil_version": __version__}
    save_png(failure_picture(slide_id, reason), qc_png)
    write_text(json.dumps(meta, indent=1), out_png.with_suffix(".json"))
    save_png(np.zeros((1, 1), np.uint8), out_png)  # written last: the PNG implies the sidecar
    return meta


def write_failed_store(out: str | Path, slide_id: str, reason: str, tile_size: int,
                       attrs: dict[str, Any] | None = None) -> dict[str, Any]:
    """A valid tile store with 0 tiles (tiles [0,T,T,3], coords/grid [0,2]) flagged `failed`."""
    import zarr

    from slidemil.slides.store import create_tile_arrays, write_index_arrays

    full = {**(attrs or {}), "slide_id": slide_id, "status": FAILED, "reason": reason, "n_tiles": 0,
            "tile_size": int(tile_size), "slidemil_version": __version__}
    with atomic_path(out) as tmp:
        g = zarr.open_group(tmp, mode="w", zarr_format=3)
        create_tile_arrays(g, 0, int(tile_size))
        write_index_arrays(g, np.zeros((0, 2), np.int32), np.zeros((0, 2), np.int32))
        g.attrs.update(full)
    return full


def store_status(attrs: dict[str, Any]) -> tuple[str, str]:
    """(status, reason) of a tile or feature store from its attrs; old stores without one are ok/empty."""
    n = attrs.get("n_tiles")
    status = attrs.get("status") or (EMPTY if n == 0 else OK)
    return status, attrs.get("reason") or ""


class SlideFailure(Exception):
    """A slide failed and its one-line ERROR was already logged; the CLI exits 1 without more."""


def report_failure(slide_id: str, reason: str, on_error: str) -> None:
    """Log `ERROR <slide_id>: <reason>` (one line); with on_error='fail' raise SlideFailure."""
    logging.getLogger("slidemil").error("%s: %s", slide_id, reason)
    if on_error == "fail":
        raise SlideFailure(reason)
